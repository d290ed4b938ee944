//! The `trekker-node` binary: parse the configuration, then serve, migrate
//! or check. SIGTERM/SIGINT stop a serving node gracefully (exit 0).

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use trekker_node::config::{BotDriverKind, SandboxMode, parse_command_line};
use trekker_node::{Application, Command, Config, error_chain, install_crypto_provider};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")))
        .init();
    let cli = match parse_command_line() {
        Ok(cli) => cli,
        Err(err) => {
            tracing::error!("invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let serving = matches!(cli.command, None | Some(Command::Serve));
    if serving
        && cli.settings.bot_driver == BotDriverKind::Process
        && cli.settings.bot_sandbox == SandboxMode::On
        && let Err(why) = trekker_node::userns::enter_if_needed()
    {
        tracing::error!(
            "cannot start: BOT_SANDBOX=on: cannot isolate bots: {why} (BOT_SANDBOX=off runs them unisolated)"
        );
        return ExitCode::FAILURE;
    }
    // No process of the machine (a bot included) may read the node's
    // memory or attach to it, whatever its uid.
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!("cannot make the node non-dumpable: {err}");
    }
    install_crypto_provider();
    let config = match Config::from_settings(cli.settings) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("invalid configuration: {err}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => trekker_node::migrate(&config).await.map(|applied| {
            tracing::info!(applied, "database schema up to date");
        }),
        Command::Check => check(&config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    // Handlers are installed before the node says it listens: a SIGTERM
    // right after that line must shut it down gracefully, not kill it.
    let mut signals = Box::pin(wait_for_signal()?);
    // A SIGTERM while the node is still starting (a database that does not
    // answer, migrations) stops it too.
    let app = tokio::select! {
        built = Application::build(config) => built.map_err(|e| {
            let text = error_chain(&e);
            // Named statements clashing or missing: a transaction pooler.
            if text.contains("SQLSTATE 42P05") || text.contains("SQLSTATE 26000") {
                format!("cannot start: {text}; this looks like a transaction pooler: set DATABASE_POOLER=transaction")
            } else {
                format!("cannot start: {text}")
            }
        })?,
        () = &mut signals => {
            tracing::info!("shutdown requested while starting");
            return Ok(());
        }
    };
    let shutdown = app.shutdown_token();
    tokio::spawn(async move {
        signals.await;
        tracing::info!("shutdown requested; finishing in-flight requests");
        shutdown.cancel();
    });
    app.run().await.map_err(|e| format!("server error: {e}"))
}

/// Validates the configuration and reads the database, writing nothing.
async fn check(config: &Config) -> Result<(), String> {
    config.check_credentials_key().map_err(|e| format!("credentials key: {e}"))?;
    let report = trekker_store::check(config.database_url.expose())
        .await
        .map_err(|e| format!("database: {}", error_chain(&e)))?;
    tracing::info!(
        server = %config.server_name,
        pending_migrations = report.pending_migrations,
        "configuration and database OK{}",
        if report.pending_migrations > 0 { " (`migrate` or `serve` applies the pending migrations)" } else { "" }
    );
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now; the future ends at the
/// first of them.
fn wait_for_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
