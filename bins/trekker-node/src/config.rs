//! Node configuration: every setting is a flag and an environment variable
//! (API.md, "Running a node"), checked once at start with clear errors.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use trekker_domain::ServerName;
use trekker_domain::governor::SendPolicy;
use trekker_store::{Backend, CredentialCipher};

/// The command line of `trekker-node`.
#[derive(Debug, Parser)]
#[command(name = "trekker-node", version, about = "A Trekker node: hosts WhatsApp bots and serves the Trekker API.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Serve the API and run this node's bots (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Check the configuration and read the database, then exit. Writes
    /// nothing: no migration, no database file, no key file.
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BotDriverKind {
    /// In-process stand-in that reports online; for demos and tests.
    Simulated,
    /// Runs BOT_COMMAND once per bot.
    Process,
    /// An in-process WhatsApp client per bot (built with `--features whatsapp`).
    #[cfg(feature = "whatsapp")]
    Whatsapp,
}

/// What sits between the node and PostgreSQL (DATABASE_POOLER).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolerMode {
    /// A direct connection, or a pooler in session mode.
    None,
    /// A transaction-pooling proxy (PgBouncer, Supavisor, a managed pooled
    /// endpoint): no named statements, nothing kept across transactions,
    /// migrations only through `migrate` and DATABASE_MIGRATION_URL.
    Transaction,
}

/// Whether the balancer moves bots between servers (REBALANCE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebalanceMode {
    /// A few bots at a time move from servers far above the fleet's mean
    /// use to servers below it.
    On,
    /// Bots stay where they were placed (the default).
    Off,
}

/// Whether `process` bots run isolated (DESIGN.md invariant 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// Each bot runs with a uid, a view of the files, a process tree and
    /// limits of its own; a node that cannot isolate refuses to start.
    On,
    /// Bots run as the node's user, with its view of the machine (logged
    /// as a warning at every start).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PairingProviderKind {
    /// Generates Baileys-shaped credentials itself; pairs no real phone.
    Simulated,
    /// Real pairing codes from WhatsApp (built with `--features whatsapp`).
    #[cfg(feature = "whatsapp")]
    Whatsapp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NotifierKind {
    /// Writes each message to the log.
    Log,
    /// POSTs `{phone, text}` to NOTIFY_WEBHOOK_URL.
    Webhook,
    /// Sent from the bot's own session (`--features whatsapp`, with
    /// BOT_DRIVER=whatsapp).
    #[cfg(feature = "whatsapp")]
    Whatsapp,
}

/// The raw settings, as clap reads them from flags and the environment.
/// `Debug` leaves out every secret (and the database URL, which may hold a password).
#[derive(Clone, Args)]
pub struct Settings {
    /// `sqlite://trekker.db` (created if missing) or `postgres://...` for a cluster.
    /// Secret: from the environment (or DATABASE_URL_FILE), never a flag.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://trekker.db", hide_env_values = true)]
    pub database_url: String,
    /// A file holding DATABASE_URL (systemd credentials, container secrets).
    #[arg(long, env = "DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,
    /// A direct connection for `migrate` when DATABASE_URL goes through a
    /// transaction pooler. Secret, like DATABASE_URL.
    #[arg(long, env = "DATABASE_MIGRATION_URL", hide_env_values = true)]
    pub database_migration_url: Option<String>,
    #[arg(long, env = "DATABASE_MIGRATION_URL_FILE")]
    pub database_migration_url_file: Option<PathBuf>,
    /// Connections this node holds at most.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// `transaction`: a transaction-pooling proxy sits in front of PostgreSQL.
    #[arg(long, env = "DATABASE_POOLER", value_enum, default_value_t = PoolerMode::None)]
    pub database_pooler: PoolerMode,
    /// A statement running longer is cancelled (the caller gets 503).
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 5000)]
    pub database_statement_timeout_ms: u64,
    /// This node's name, stored upper-case.
    #[arg(long, env = "SERVER_NAME", default_value = "SERVER0")]
    pub server_name: String,
    /// This node's capacity, written to server_registry at start.
    #[arg(long, env = "MAX_BOT_COUNT", default_value_t = 10)]
    pub max_bot_count: u32,
    /// Listen address; port 0 picks a free port.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: SocketAddr,
    /// How other nodes reach this one (default `http://<BIND_ADDR>`).
    #[arg(long, env = "BASE_URL")]
    pub base_url: Option<String>,
    /// Signs and verifies node-to-node calls (at least 32 bytes).
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// A file holding CLUSTER_SECRET.
    #[arg(long, env = "CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Also accepted when verifying, during a rotation.
    #[arg(long, env = "CLUSTER_SECRET_PREVIOUS", hide_env_values = true)]
    pub cluster_secret_previous: Option<String>,
    /// A file holding CLUSTER_SECRET_PREVIOUS.
    #[arg(long, env = "CLUSTER_SECRET_PREVIOUS_FILE")]
    pub cluster_secret_previous_file: Option<PathBuf>,
    /// Bearer token for /api/admin/*; unset, the admin API answers 403.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// A file holding ADMIN_TOKEN.
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// 32 bytes, base64; encrypts stored credentials. Required with PostgreSQL.
    #[arg(long, env = "CREDENTIALS_KEY", hide_env_values = true)]
    pub credentials_key: Option<String>,
    /// A file holding CREDENTIALS_KEY.
    #[arg(long, env = "CREDENTIALS_KEY_FILE")]
    pub credentials_key_file: Option<PathBuf>,
    /// Seconds between heartbeats; a server is offline after 3 missed beats.
    #[arg(long, env = "HEARTBEAT_INTERVAL_SECS", default_value_t = 10)]
    pub heartbeat_interval_secs: u64,
    /// Budget in milliseconds for one synchronous cross-server update.
    #[arg(long, env = "CROSS_SERVER_TIMEOUT_MS", default_value_t = 5000)]
    pub cross_server_timeout_ms: u64,
    #[arg(long, env = "BOT_DRIVER", value_enum, default_value_t = BotDriverKind::Simulated)]
    pub bot_driver: BotDriverKind,
    /// The command the `process` driver runs per bot (split on whitespace).
    #[arg(long, env = "BOT_COMMAND")]
    pub bot_command: Option<String>,
    /// Where the `process` driver keeps each bot's private auth directory.
    #[arg(long, env = "BOT_AUTH_DIR", default_value = "trekker-bots")]
    pub bot_auth_dir: std::path::PathBuf,
    /// Bot starts per second (boot is staggered).
    #[arg(long, env = "BOT_START_RATE", default_value_t = 20)]
    pub bot_start_rate: u32,
    /// `on`: every `process` bot runs isolated (its own uid, view of the
    /// files, process tree and limits); `off`: as the node's user.
    #[arg(long, env = "BOT_SANDBOX", value_enum, default_value_t = SandboxMode::On)]
    pub bot_sandbox: SandboxMode,
    /// Memory of one bot's whole process tree (MiB); past it the bot is killed.
    #[arg(long, env = "BOT_MEMORY_MB", default_value_t = 512)]
    pub bot_memory_mb: u64,
    /// Processes and threads one bot may hold.
    #[arg(long, env = "BOT_PIDS_MAX", default_value_t = 128)]
    pub bot_pids_max: u32,
    /// CPU one bot may use (100 = one core).
    #[arg(long, env = "BOT_CPU_PERCENT", default_value_t = 100)]
    pub bot_cpu_percent: u32,
    /// Size a running bot's AUTH_DIR may reach (MiB); past it the bot is stopped.
    #[arg(long, env = "BOT_DISK_MB", default_value_t = 64)]
    pub bot_disk_mb: u64,
    /// A server whose node lease has been gone this long (seconds) hands its
    /// approved bots to other servers; 0: never.
    #[arg(long, env = "FAILOVER_AFTER_SECS", default_value_t = 120)]
    pub failover_after_secs: u64,
    /// Bots one node starts per minute that arrive by move, evacuation or
    /// failover; also the pace of evacuation and balancing per target.
    #[arg(long, env = "MOVES_PER_MIN", default_value_t = 30)]
    pub moves_per_min: u32,
    #[arg(long, env = "REBALANCE", value_enum, default_value_t = RebalanceMode::Off)]
    pub rebalance: RebalanceMode,
    /// Seconds a `process` bot gets between SIGTERM and SIGKILL.
    #[arg(long, env = "BOT_STOP_GRACE_SECS", default_value_t = 10)]
    pub bot_stop_grace_secs: u64,
    /// How often a running bot's changed session folder is saved to the
    /// database (and always when it stops).
    #[arg(long, env = "BOT_STATE_SYNC_SECS", default_value_t = 10)]
    pub bot_state_sync_secs: u64,
    /// Largest session folder a bot may keep, in MiB; larger is refused
    /// and the last good state kept.
    #[arg(long, env = "BOT_STATE_MAX_MB", default_value_t = 16)]
    pub bot_state_max_mb: u64,
    /// Messages a bot may send a minute, on average, once its number is
    /// warmed up (the ban-risk governor; docs/whatsapp.md); 0: no limit.
    #[arg(long, env = "BOT_SENDS_PER_MIN", default_value_t = SendPolicy::default().sends_per_min)]
    pub bot_sends_per_min: u32,
    /// Messages that may leave at once after a quiet while.
    #[arg(long, env = "BOT_SEND_BURST", default_value_t = SendPolicy::default().send_burst)]
    pub bot_send_burst: u32,
    /// People a bot never wrote to (and who never wrote to it) it may reach
    /// per 24 h once warmed up; 0: no limit.
    #[arg(long, env = "BOT_NEW_CONTACTS_PER_DAY", default_value_t = SendPolicy::default().new_contacts_per_day)]
    pub bot_new_contacts_per_day: u32,
    /// Days after pairing until a number gets its whole limits (10 % on the
    /// first day, growing evenly); 0: no warm-up.
    #[arg(long, env = "BOT_WARMUP_DAYS", default_value_t = SendPolicy::default().warmup_days)]
    pub bot_warmup_days: u32,
    #[arg(long, env = "PAIRING_PROVIDER", value_enum, default_value_t = PairingProviderKind::Simulated)]
    pub pairing_provider: PairingProviderKind,
    #[arg(long, env = "NOTIFIER", value_enum, default_value_t = NotifierKind::Log)]
    pub notifier: NotifierKind,
    /// Where the `webhook` notifier posts.
    #[arg(long, env = "NOTIFY_WEBHOOK_URL")]
    pub notify_webhook_url: Option<String>,
    /// Where the `whatsapp` driver posts incoming messages and status
    /// changes (signed with BOT_EVENTS_WEBHOOK_SECRET).
    #[arg(long, env = "BOT_EVENTS_WEBHOOK_URL")]
    pub bot_events_webhook_url: Option<String>,
    /// HMAC-SHA256 key of the events webhook's signatures (16 bytes or more).
    #[arg(long, env = "BOT_EVENTS_WEBHOOK_SECRET", hide_env_values = true)]
    pub bot_events_webhook_secret: Option<String>,
    /// The WhatsApp Web version the in-process clients announce (driver,
    /// pairing, notifier) until a refresh reads WhatsApp's current one; a
    /// connect never fetches it itself.
    #[cfg(feature = "whatsapp")]
    #[arg(long, env = "WHATSAPP_WEB_VERSION", default_value_t = trekker_whatsapp::web_version::PINNED)]
    pub whatsapp_web_version: trekker_whatsapp::web_version::Version,
    /// Hours between refreshes of that version, in the background; 0: never
    /// (the configured one stays).
    #[cfg(feature = "whatsapp")]
    #[arg(long, env = "WHATSAPP_WEB_VERSION_REFRESH_HOURS", default_value_t = 24)]
    pub whatsapp_web_version_refresh_hours: u32,
    /// Where the refresh reads the version (WhatsApp Web's sw.js, or a mirror).
    #[cfg(feature = "whatsapp")]
    #[arg(long, env = "WHATSAPP_WEB_VERSION_URL", default_value = trekker_whatsapp::web_version::SW_JS_URL)]
    pub whatsapp_web_version_url: String,
    /// Requests per minute per client address to /api/pair and
    /// /api/guest/register-bot; 0 turns the limit off.
    #[arg(long, env = "RATE_LIMIT_PER_MIN", default_value_t = 30)]
    pub rate_limit_per_min: u32,
    /// A bot not approved within this many hours is rejected; its phone
    /// and slot are freed and the guest is told.
    #[arg(long, env = "PENDING_TTL_HOURS", default_value_t = 72)]
    pub pending_ttl_hours: u32,
    /// At most this share (percent) of a server's slots may hold bots
    /// waiting for approval, so approved guests always find room.
    #[arg(long, env = "PENDING_MAX_PERCENT", default_value_t = 50)]
    pub pending_max_percent: u32,
    /// Admins are warned when a server, or the whole cluster, crosses this
    /// share of its slots, and again at 100 % (once per crossing).
    #[arg(long, env = "CAPACITY_WARN_PERCENT", default_value_t = 80)]
    pub capacity_warn_percent: u32,
    /// A phone number that receives admin warnings through the notifier;
    /// unset: warnings are recorded, counted and shown only.
    #[arg(long, env = "ADMIN_PHONE")]
    pub admin_phone: Option<String>,
    /// Open client connections served at once; past it the node still
    /// answers /healthz (and 503 to the rest) on a few more, then refuses.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub http_max_connections: u32,
    /// Connections one client address may hold (an IPv6 client is its /64);
    /// 0 = no cap (set it behind a reverse proxy, which is one address).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 256)]
    pub http_max_connections_per_address: u32,
    /// Seconds a client has to send a request's headers, and that an idle
    /// keep-alive connection is kept; also the longest pause inside a body.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub http_header_timeout_secs: u64,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("server_name", &self.server_name)
            .field("max_bot_count", &self.max_bot_count)
            .field("bind_addr", &self.bind_addr)
            .field("base_url", &self.base_url)
            .field("bot_driver", &self.bot_driver)
            .field("pairing_provider", &self.pairing_provider)
            .field("notifier", &self.notifier)
            .field("rate_limit_per_min", &self.rate_limit_per_min)
            .finish_non_exhaustive()
    }
}

/// A secret setting: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the credentials key comes from.
#[derive(Debug, Clone)]
pub enum CredentialsKeySource {
    Configured(Secret),
    /// Generated into (or read from) a file beside the SQLite database.
    KeyFile(PathBuf),
    /// An in-memory SQLite database: a key that lives as long as the process.
    Ephemeral,
}

/// The checked configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Secret,
    pub database_migration_url: Option<Secret>,
    /// How the node reaches PostgreSQL (connections, pooler, timeouts).
    pub database: trekker_store::DbSettings,
    pub backend: Backend,
    pub server_name: ServerName,
    pub max_bot_count: i64,
    pub bind_addr: SocketAddr,
    pub base_url: Option<String>,
    pub cluster_secret: Option<Secret>,
    pub cluster_secret_previous: Option<Secret>,
    pub admin_token: Option<Secret>,
    pub credentials_key: CredentialsKeySource,
    pub heartbeat_interval: Duration,
    pub cross_server_timeout: Duration,
    pub bot_driver: BotDriverKind,
    pub bot_command: Option<String>,
    pub bot_auth_dir: std::path::PathBuf,
    pub bot_start_rate: u32,
    pub bot_stop_grace: Duration,
    pub bot_state_sync: Duration,
    /// In bytes.
    pub bot_state_max_bytes: u64,
    /// The ban-risk governor's limits of every bot.
    pub send_policy: SendPolicy,
    pub bot_sandbox: SandboxMode,
    pub bot_limits: trekker_runtime::sandbox::Limits,
    /// In bytes.
    pub bot_disk_bytes: u64,
    /// Zero: never.
    pub failover_after: Duration,
    pub moves_per_min: u32,
    pub rebalance: bool,
    /// Files the secrets were read from (hidden from bots).
    pub secret_files: Vec<PathBuf>,
    pub pairing_provider: PairingProviderKind,
    pub notifier: NotifierKind,
    pub notify_webhook_url: Option<String>,
    /// The events webhook of the `whatsapp` driver: URL and signing key.
    pub bot_events_webhook: Option<(String, Secret)>,
    #[cfg(feature = "whatsapp")]
    pub whatsapp_web: WhatsAppWeb,
    pub rate_limit_per_min: u32,
    pub pending_ttl: Duration,
    pub pending_max_percent: u32,
    pub capacity_warn_percent: u8,
    pub admin_phone: Option<trekker_domain::PhoneNumber>,
    pub http_max_connections: usize,
    pub http_max_connections_per_address: usize,
    pub http_header_timeout: Duration,
}

/// Which WhatsApp Web version the in-process clients announce, and how it
/// is kept current.
#[cfg(feature = "whatsapp")]
#[derive(Debug, Clone)]
pub struct WhatsAppWeb {
    pub version: trekker_whatsapp::web_version::Version,
    /// `None`: never refreshed.
    pub refresh_every: Option<Duration>,
    pub refresh_url: String,
}

/// A setting that cannot be used, and why (never its value if secret).
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

/// BOT_EVENTS_WEBHOOK_URL and its secret: both or neither, and only where a
/// driver has events to send.
fn bot_events_webhook(settings: &Settings) -> Result<Option<(String, Secret)>, ConfigError> {
    let (url, secret) = (&settings.bot_events_webhook_url, &settings.bot_events_webhook_secret);
    let Some(url) = url else {
        return match secret {
            Some(_) => Err(invalid("BOT_EVENTS_WEBHOOK_SECRET", "is set but BOT_EVENTS_WEBHOOK_URL is not")),
            None => Ok(None),
        };
    };
    check_http_url("BOT_EVENTS_WEBHOOK_URL", url)?;
    #[cfg(feature = "whatsapp")]
    let has_events = settings.bot_driver == BotDriverKind::Whatsapp;
    #[cfg(not(feature = "whatsapp"))]
    let has_events = false;
    if !has_events {
        return Err(invalid("BOT_EVENTS_WEBHOOK_URL", "is used by BOT_DRIVER=whatsapp only"));
    }
    match secret {
        Some(secret) if secret.len() >= 16 => Ok(Some((url.clone(), Secret::new(secret.clone())))),
        Some(_) => Err(invalid("BOT_EVENTS_WEBHOOK_SECRET", "must be at least 16 bytes")),
        None => {
            Err(invalid("BOT_EVENTS_WEBHOOK_SECRET", "is required with BOT_EVENTS_WEBHOOK_URL (receivers check it)"))
        }
    }
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { setting, reason: reason.into() }
}

/// The smallest cluster secret accepted, in bytes (DESIGN.md).
pub const MIN_CLUSTER_SECRET_BYTES: usize = 32;

/// The settings that hold secrets: from the environment or `<NAME>_FILE`,
/// never from a flag (`/proc/<pid>/cmdline` is readable by every user).
pub const SECRET_FLAGS: &[(&str, &str)] = &[
    ("database_url", "DATABASE_URL"),
    ("database_migration_url", "DATABASE_MIGRATION_URL"),
    ("cluster_secret", "CLUSTER_SECRET"),
    ("cluster_secret_previous", "CLUSTER_SECRET_PREVIOUS"),
    ("admin_token", "ADMIN_TOKEN"),
    ("credentials_key", "CREDENTIALS_KEY"),
];

/// The command line, refusing a secret given as a flag (with its name).
pub fn parse_command_line() -> Result<Cli, ConfigError> {
    use clap::CommandFactory as _;
    cli_from_matches(&Cli::command().get_matches())
}

fn cli_from_matches(matches: &clap::ArgMatches) -> Result<Cli, ConfigError> {
    use clap::{FromArgMatches as _, parser::ValueSource};
    for (id, env) in SECRET_FLAGS {
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            let flag = format!("--{}", id.replace('_', "-"));
            return Err(invalid(
                env,
                format!(
                    "`{flag}` is refused: a command line is readable by every user of the machine; set {env} in \
                     the environment or put it in a file named by {env}_FILE"
                ),
            ));
        }
    }
    Cli::from_arg_matches(matches).map_err(|e| invalid("command line", e.to_string()))
}

/// A secret from its setting or from the file `<NAME>_FILE` names (one
/// trailing newline dropped); both at once is an error.
fn secret_from(
    setting: &'static str,
    value: Option<String>,
    file: Option<&PathBuf>,
) -> Result<Option<String>, ConfigError> {
    let Some(file) = file else { return Ok(value) };
    if value.is_some() {
        return Err(invalid(setting, format!("set {setting} or {setting}_FILE, not both")));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| invalid(setting, format!("cannot read {setting}_FILE {}: {}", file.display(), e.kind())))?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(Some(text.strip_suffix('\r').unwrap_or(text).to_owned()))
}

impl Config {
    pub fn from_settings(mut settings: Settings) -> Result<Self, ConfigError> {
        let mut secret_files = Vec::new();
        if let Some(file) = &settings.database_url_file {
            // DATABASE_URL has a default: the file, when named, replaces it.
            settings.database_url = secret_from("DATABASE_URL", None, Some(file))?.unwrap_or_default();
            secret_files.push(file.clone());
        }
        settings.database_migration_url = secret_from(
            "DATABASE_MIGRATION_URL",
            settings.database_migration_url,
            settings.database_migration_url_file.as_ref(),
        )?;
        settings.cluster_secret =
            secret_from("CLUSTER_SECRET", settings.cluster_secret, settings.cluster_secret_file.as_ref())?;
        settings.cluster_secret_previous = secret_from(
            "CLUSTER_SECRET_PREVIOUS",
            settings.cluster_secret_previous,
            settings.cluster_secret_previous_file.as_ref(),
        )?;
        settings.admin_token = secret_from("ADMIN_TOKEN", settings.admin_token, settings.admin_token_file.as_ref())?;
        settings.credentials_key =
            secret_from("CREDENTIALS_KEY", settings.credentials_key, settings.credentials_key_file.as_ref())?;
        secret_files.extend(
            [
                &settings.database_migration_url_file,
                &settings.cluster_secret_file,
                &settings.cluster_secret_previous_file,
                &settings.admin_token_file,
                &settings.credentials_key_file,
            ]
            .into_iter()
            .flatten()
            .cloned(),
        );
        if !(16..=1_048_576).contains(&settings.bot_memory_mb) {
            return Err(invalid("BOT_MEMORY_MB", "must be between 16 and 1048576"));
        }
        if !(8..=65_536).contains(&settings.bot_pids_max) {
            return Err(invalid("BOT_PIDS_MAX", "must be between 8 and 65536"));
        }
        if !(1..=6_400).contains(&settings.bot_cpu_percent) {
            return Err(invalid("BOT_CPU_PERCENT", "must be between 1 and 6400"));
        }
        if !(1..=65_536).contains(&settings.bot_disk_mb) {
            return Err(invalid("BOT_DISK_MB", "must be between 1 and 65536"));
        }
        if !(1..=10_000).contains(&settings.database_max_connections) {
            return Err(invalid("DATABASE_MAX_CONNECTIONS", "must be between 1 and 10000"));
        }
        if !(100..=600_000).contains(&settings.database_statement_timeout_ms) {
            return Err(invalid("DATABASE_STATEMENT_TIMEOUT_MS", "must be between 100 and 600000"));
        }
        if let Some(url) = &settings.database_migration_url
            && !matches!(Backend::from_url(url), Ok(Backend::Postgres))
        {
            return Err(invalid("DATABASE_MIGRATION_URL", "must be a postgres:// URL (a direct connection)"));
        }
        if settings.failover_after_secs > 7 * 86_400 {
            return Err(invalid("FAILOVER_AFTER_SECS", "must be at most 604800 (a week); 0 turns failover off"));
        }
        if !(1..=100_000).contains(&settings.moves_per_min) {
            return Err(invalid("MOVES_PER_MIN", "must be between 1 and 100000"));
        }
        let backend = Backend::from_url(&settings.database_url)
            .map_err(|_| invalid("DATABASE_URL", "must start with sqlite:// or postgres://"))?;
        let server_name =
            ServerName::parse(&settings.server_name).map_err(|e| invalid("SERVER_NAME", e.to_string()))?;
        if settings.heartbeat_interval_secs == 0 {
            return Err(invalid("HEARTBEAT_INTERVAL_SECS", "must be at least 1"));
        }
        if settings.bot_start_rate == 0 {
            return Err(invalid("BOT_START_RATE", "must be at least 1"));
        }
        if !(1..=8760).contains(&settings.pending_ttl_hours) {
            return Err(invalid("PENDING_TTL_HOURS", "must be between 1 and 8760 (a year)"));
        }
        if settings.http_max_connections == 0 {
            return Err(invalid("HTTP_MAX_CONNECTIONS", "must be at least 1"));
        }
        if !(1..=3600).contains(&settings.http_header_timeout_secs) {
            return Err(invalid("HTTP_HEADER_TIMEOUT_SECS", "must be between 1 and 3600"));
        }
        if !(1..=100).contains(&settings.pending_max_percent) {
            return Err(invalid("PENDING_MAX_PERCENT", "must be between 1 and 100"));
        }
        // Below 10 % the hysteresis (5 points) would keep a warning forever.
        let capacity_warn_percent = u8::try_from(settings.capacity_warn_percent)
            .ok()
            .filter(|p| (10..=100).contains(p))
            .ok_or_else(|| invalid("CAPACITY_WARN_PERCENT", "must be between 10 and 100"))?;
        let admin_phone = match settings.admin_phone.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(phone) => {
                Some(trekker_domain::PhoneNumber::parse(phone).map_err(|e| invalid("ADMIN_PHONE", e.to_string()))?)
            }
        };
        if !(1..=3600).contains(&settings.bot_state_sync_secs) {
            return Err(invalid("BOT_STATE_SYNC_SECS", "must be between 1 and 3600"));
        }
        if !(1..=1024).contains(&settings.bot_state_max_mb) {
            return Err(invalid("BOT_STATE_MAX_MB", "must be between 1 and 1024"));
        }
        if settings.cross_server_timeout_ms == 0 {
            return Err(invalid("CROSS_SERVER_TIMEOUT_MS", "must be at least 1"));
        }
        for (setting, secret) in [
            ("CLUSTER_SECRET", &settings.cluster_secret),
            ("CLUSTER_SECRET_PREVIOUS", &settings.cluster_secret_previous),
        ] {
            if secret.as_ref().is_some_and(|s| s.len() < MIN_CLUSTER_SECRET_BYTES) {
                return Err(invalid(setting, format!("must be at least {MIN_CLUSTER_SECRET_BYTES} bytes")));
            }
        }
        if settings.admin_token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid("ADMIN_TOKEN", "must not be blank"));
        }
        if let Some(url) = &settings.base_url {
            check_http_url("BASE_URL", url)?;
        }
        let credentials_key = match (&settings.credentials_key, backend) {
            (Some(key), _) => {
                CredentialCipher::from_base64(key).map_err(|e| invalid("CREDENTIALS_KEY", e.to_string()))?;
                CredentialsKeySource::Configured(Secret::new(key.clone()))
            }
            (None, Backend::Postgres) => {
                return Err(invalid(
                    "CREDENTIALS_KEY",
                    "is required with PostgreSQL (32 bytes, base64; e.g. `openssl rand -base64 32`), \
                     and must be the same on every node",
                ));
            }
            (None, Backend::Sqlite) => match sqlite_path(&settings.database_url) {
                Some(path) => CredentialsKeySource::KeyFile(PathBuf::from(format!("{path}.key"))),
                None => CredentialsKeySource::Ephemeral,
            },
        };
        if settings.bot_driver == BotDriverKind::Process
            && settings.bot_command.as_deref().is_none_or(|c| c.trim().is_empty())
        {
            return Err(invalid("BOT_COMMAND", "is required with BOT_DRIVER=process"));
        }
        if settings.notifier == NotifierKind::Webhook {
            match &settings.notify_webhook_url {
                Some(url) => check_http_url("NOTIFY_WEBHOOK_URL", url)?,
                None => return Err(invalid("NOTIFY_WEBHOOK_URL", "is required with NOTIFIER=webhook")),
            }
        }
        #[cfg(feature = "whatsapp")]
        if settings.notifier == NotifierKind::Whatsapp && settings.bot_driver != BotDriverKind::Whatsapp {
            // Another driver's bot holds the session: a second connection
            // would replace its stream.
            return Err(invalid("NOTIFIER", "`whatsapp` needs BOT_DRIVER=whatsapp (it sends from the bots' sessions)"));
        }
        let bot_events_webhook = bot_events_webhook(&settings)?;
        #[cfg(feature = "whatsapp")]
        let whatsapp_web = {
            check_http_url("WHATSAPP_WEB_VERSION_URL", &settings.whatsapp_web_version_url)?;
            let hours = u64::from(settings.whatsapp_web_version_refresh_hours);
            WhatsAppWeb {
                version: settings.whatsapp_web_version,
                refresh_every: (hours > 0).then(|| Duration::from_secs(hours * 3600)),
                refresh_url: settings.whatsapp_web_version_url.clone(),
            }
        };
        let database = trekker_store::DbSettings {
            max_connections: settings.database_max_connections,
            pooler: match settings.database_pooler {
                PoolerMode::None => trekker_store::Pooler::None,
                PoolerMode::Transaction => trekker_store::Pooler::Transaction,
            },
            statement_timeout_ms: settings.database_statement_timeout_ms,
            ..trekker_store::DbSettings::default()
        };
        Ok(Self {
            database_url: Secret::new(settings.database_url),
            database_migration_url: settings.database_migration_url.map(Secret::new),
            database,
            backend,
            server_name,
            max_bot_count: i64::from(settings.max_bot_count),
            bind_addr: settings.bind_addr,
            base_url: settings.base_url.map(|u| u.trim_end_matches('/').to_owned()),
            cluster_secret: settings.cluster_secret.map(Secret::new),
            cluster_secret_previous: settings.cluster_secret_previous.map(Secret::new),
            admin_token: settings.admin_token.map(Secret::new),
            credentials_key,
            heartbeat_interval: Duration::from_secs(settings.heartbeat_interval_secs),
            cross_server_timeout: Duration::from_millis(settings.cross_server_timeout_ms),
            bot_driver: settings.bot_driver,
            bot_command: settings.bot_command,
            bot_auth_dir: settings.bot_auth_dir,
            bot_start_rate: settings.bot_start_rate,
            bot_stop_grace: Duration::from_secs(settings.bot_stop_grace_secs),
            bot_state_sync: Duration::from_secs(settings.bot_state_sync_secs),
            bot_state_max_bytes: settings.bot_state_max_mb * 1024 * 1024,
            send_policy: SendPolicy {
                sends_per_min: settings.bot_sends_per_min,
                send_burst: settings.bot_send_burst,
                new_contacts_per_day: settings.bot_new_contacts_per_day,
                warmup_days: settings.bot_warmup_days,
            },
            bot_sandbox: settings.bot_sandbox,
            bot_limits: trekker_runtime::sandbox::Limits {
                memory_bytes: settings.bot_memory_mb * 1024 * 1024,
                pids: settings.bot_pids_max,
                cpu_percent: settings.bot_cpu_percent,
            },
            bot_disk_bytes: settings.bot_disk_mb * 1024 * 1024,
            failover_after: Duration::from_secs(settings.failover_after_secs),
            moves_per_min: settings.moves_per_min,
            rebalance: settings.rebalance == RebalanceMode::On,
            secret_files,
            pairing_provider: settings.pairing_provider,
            notifier: settings.notifier,
            notify_webhook_url: settings.notify_webhook_url,
            bot_events_webhook,
            #[cfg(feature = "whatsapp")]
            whatsapp_web,
            rate_limit_per_min: settings.rate_limit_per_min,
            pending_ttl: Duration::from_secs(u64::from(settings.pending_ttl_hours) * 3600),
            pending_max_percent: settings.pending_max_percent,
            capacity_warn_percent,
            admin_phone,
            http_max_connections: settings.http_max_connections as usize,
            http_max_connections_per_address: settings.http_max_connections_per_address as usize,
            http_header_timeout: Duration::from_secs(settings.http_header_timeout_secs),
        })
    }

    /// Settings with every default, for tests and embedding.
    pub fn defaults() -> Settings {
        Cli::parse_from(["trekker-node"]).settings
    }

    /// Builds the credentials cipher (creating the key file if needed).
    pub fn credentials_cipher(&self) -> Result<CredentialCipher, trekker_store::StoreError> {
        match &self.credentials_key {
            CredentialsKeySource::Configured(key) => CredentialCipher::from_base64(key.expose()),
            CredentialsKeySource::KeyFile(path) => CredentialCipher::load_or_create_key_file(path),
            CredentialsKeySource::Ephemeral => {
                use ring::rand::SecureRandom as _;
                let mut key = [0u8; trekker_store::KEY_LEN];
                ring::rand::SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| trekker_store::StoreError::Config("no system randomness".into()))?;
                Ok(CredentialCipher::new(&key))
            }
        }
    }
}

impl Config {
    /// Checks the credentials key without creating a key file.
    pub fn check_credentials_key(&self) -> Result<(), trekker_store::StoreError> {
        match &self.credentials_key {
            CredentialsKeySource::Configured(key) => CredentialCipher::from_base64(key.expose()).map(drop),
            CredentialsKeySource::KeyFile(path) => CredentialCipher::load_key_file(path).map(drop),
            CredentialsKeySource::Ephemeral => Ok(()),
        }
    }
}

/// The file path of a SQLite URL, or `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" { None } else { Some(path.to_owned()) }
}

fn check_http_url(setting: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(invalid(setting, "must start with http:// or https://"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        let mut all = vec!["trekker-node"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap().settings
    }

    /// `whatsapp` is a pairing provider only in a build with the feature;
    /// without it the value is refused at start, naming the setting.
    #[test]
    fn the_whatsapp_pairing_provider_exists_only_with_the_feature() {
        let parsed = Cli::try_parse_from(["trekker-node", "--pairing-provider", "whatsapp"]);
        #[cfg(feature = "whatsapp")]
        assert_eq!(parsed.unwrap().settings.pairing_provider, PairingProviderKind::Whatsapp);
        #[cfg(not(feature = "whatsapp"))]
        assert!(parsed.unwrap_err().to_string().contains("--pairing-provider"));
    }

    #[test]
    fn secrets_are_refused_as_flags_and_read_from_files() {
        use clap::CommandFactory as _;
        let matches = Cli::command().try_get_matches_from(["trekker-node", "--admin-token", "t0ken"]).unwrap();
        let refused = cli_from_matches(&matches).unwrap_err();
        assert_eq!(refused.setting, "ADMIN_TOKEN");
        assert!(refused.reason.contains("`--admin-token` is refused") && !refused.reason.contains("t0ken"));
        let matches = Cli::command().try_get_matches_from(["trekker-node", "--server-name", "S1"]).unwrap();
        assert!(cli_from_matches(&matches).is_ok(), "other settings are fine as flags");

        let dir = tempfile::tempdir().unwrap();
        let (token, secret) = (dir.path().join("admin-token"), dir.path().join("cluster-secret"));
        std::fs::write(&token, "from-a-file\n").unwrap();
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef").unwrap();
        let mut read = settings(&["--database-url", "sqlite://x.db"]);
        read.admin_token_file = Some(token.clone());
        read.cluster_secret_file = Some(secret.clone());
        let config = Config::from_settings(read).unwrap();
        assert_eq!(config.admin_token.as_ref().map(Secret::expose), Some("from-a-file"), "one newline dropped");
        assert_eq!(config.cluster_secret.as_ref().map(|s| s.expose().len()), Some(32));
        assert_eq!(config.secret_files, vec![secret.clone(), token.clone()], "their folders are hidden from bots");

        let mut both = settings(&["--database-url", "sqlite://x.db", "--admin-token", "t"]);
        both.admin_token_file = Some(token);
        assert!(Config::from_settings(both).unwrap_err().reason.contains("not both"));
        let mut missing = settings(&["--database-url", "sqlite://x.db"]);
        missing.cluster_secret_file = Some(dir.path().join("nope"));
        let error = Config::from_settings(missing).unwrap_err();
        assert_eq!(error.setting, "CLUSTER_SECRET");
        assert!(error.reason.contains("CLUSTER_SECRET_FILE"));
    }

    #[test]
    fn defaults_run_on_sqlite_with_a_key_file() {
        let config = Config::from_settings(settings(&["--database-url", "sqlite://trekker.db"])).unwrap();
        assert_eq!(config.backend, Backend::Sqlite);
        assert_eq!(config.server_name.as_str(), "SERVER0");
        assert_eq!(config.max_bot_count, 10);
        assert_eq!(config.bind_addr.to_string(), "127.0.0.1:8080");
        assert!(matches!(config.credentials_key, CredentialsKeySource::KeyFile(ref p)
                if p.to_str() == Some("trekker.db.key")));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(config.rate_limit_per_min, 30);
        assert_eq!(config.send_policy, SendPolicy::default());
        assert_eq!(
            (config.send_policy.sends_per_min, config.send_policy.new_contacts_per_day, config.send_policy.warmup_days),
            (20, 250, 14)
        );
        let args = ["--database-url", "sqlite://x.db", "--bot-sends-per-min", "0", "--bot-new-contacts-per-day", "40"];
        let config = Config::from_settings(settings(&args)).unwrap();
        assert_eq!((config.send_policy.sends_per_min, config.send_policy.new_contacts_per_day), (0, 40));
    }

    #[test]
    fn refuses_bad_settings_with_the_setting_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["--database-url", "mysql://x"], "DATABASE_URL"),
            (&["--database-url", "sqlite://x.db", "--server-name", "bad name"], "SERVER_NAME"),
            (&["--database-url", "postgres://localhost/db"], "CREDENTIALS_KEY"),
            (&["--database-url", "sqlite://x.db", "--credentials-key", "short"], "CREDENTIALS_KEY"),
            (&["--database-url", "sqlite://x.db", "--cluster-secret", "too-short"], "CLUSTER_SECRET"),
            (&["--database-url", "sqlite://x.db", "--bot-driver", "process"], "BOT_COMMAND"),
            (&["--database-url", "sqlite://x.db", "--notifier", "webhook"], "NOTIFY_WEBHOOK_URL"),
            (&["--database-url", "sqlite://x.db", "--base-url", "ftp://x"], "BASE_URL"),
            (&["--database-url", "sqlite://x.db", "--heartbeat-interval-secs", "0"], "HEARTBEAT_INTERVAL_SECS"),
            (
                &["--database-url", "sqlite://x.db", "--bot-events-webhook-secret", "0123456789abcdef"],
                "BOT_EVENTS_WEBHOOK_SECRET",
            ),
            // Only the in-process WhatsApp driver has events to send.
            (&["--database-url", "sqlite://x.db", "--bot-events-webhook-url", "http://x/e"], "BOT_EVENTS_WEBHOOK_URL"),
        ];
        for (args, setting) in cases {
            let err = Config::from_settings(settings(args)).unwrap_err();
            assert_eq!(err.setting, *setting, "{args:?}");
        }
    }

    #[cfg(feature = "whatsapp")]
    #[test]
    fn whatsapp_settings_hang_together() {
        let base = ["--database-url", "sqlite://x.db"];
        let with = |extra: &[&str]| Config::from_settings(settings(&[&base[..], extra].concat()));
        let err = with(&["--notifier", "whatsapp"]).unwrap_err();
        assert_eq!(err.setting, "NOTIFIER", "the whatsapp notifier sends from the whatsapp driver's sessions");
        assert!(with(&["--notifier", "whatsapp", "--bot-driver", "whatsapp"]).is_ok());
        let hook = ["--bot-driver", "whatsapp", "--bot-events-webhook-url", "https://bots.example/events"];
        assert_eq!(with(&hook).unwrap_err().setting, "BOT_EVENTS_WEBHOOK_SECRET");
        assert_eq!(
            with(&[&hook[..], &["--bot-events-webhook-secret", "short"]].concat()).unwrap_err().setting,
            "BOT_EVENTS_WEBHOOK_SECRET"
        );
        let secret = "a-long-enough-shared-secret";
        let config = with(&[&hook[..], &["--bot-events-webhook-secret", secret]].concat()).unwrap();
        assert_eq!(
            config.bot_events_webhook.as_ref().map(|(url, _)| url.as_str()),
            Some("https://bots.example/events")
        );
        assert!(!format!("{config:?}").contains(secret), "the secret is never printed");

        let web = with(&[]).unwrap().whatsapp_web;
        assert_eq!(
            (web.version, web.refresh_every),
            (trekker_whatsapp::web_version::PINNED, Some(Duration::from_secs(86_400)))
        );
        assert_eq!(web.refresh_url, "https://web.whatsapp.com/sw.js");
        let pinned =
            with(&["--whatsapp-web-version", "2.3000.1015901307", "--whatsapp-web-version-refresh-hours", "0"]);
        let web = pinned.unwrap().whatsapp_web;
        assert_eq!((web.version.revision, web.refresh_every), (1_015_901_307, None));
        assert!(
            Cli::try_parse_from(["trekker-node", "--whatsapp-web-version", "2.3000"]).is_err(),
            "a version is three numbers"
        );
        assert_eq!(
            with(&["--whatsapp-web-version-url", "ftp://mirror/sw.js"]).unwrap_err().setting,
            "WHATSAPP_WEB_VERSION_URL"
        );
    }

    #[test]
    fn postgres_with_key_is_accepted_and_secrets_stay_hidden() {
        let key = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        let config = Config::from_settings(settings(&[
            "--database-url",
            "postgres://user:hunter2@db/trekker",
            "--credentials-key",
            key,
            "--admin-token",
            "admin-secret",
        ]))
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("admin-secret") && !shown.contains(key));
        let raw =
            settings(&["--cluster-secret", "cluster-secret-value-of-32-bytes!!", "--admin-token", "admin-secret"]);
        let shown = format!("{raw:?}");
        assert!(!shown.contains("cluster-secret-value") && !shown.contains("admin-secret"), "{shown}");
    }

    #[test]
    fn in_memory_sqlite_uses_an_ephemeral_key() {
        let config = Config::from_settings(settings(&["--database-url", "sqlite::memory:"])).unwrap();
        assert!(matches!(config.credentials_key, CredentialsKeySource::Ephemeral));
    }
}
