//! The `process` driver: one OS process per bot (e.g. an existing Baileys
//! bot behind a small wrapper). The contract is in
//! docs/bot-process-contract.md:
//!
//! - BOT_COMMAND is split on whitespace (no shell) and run with BOT_ID,
//!   PHONE_NUMBER, AUTH_DIR, SERVER_NAME and CREDENTIALS_VERSION set;
//!   AUTH_DIR (mode 0700) holds `creds.json` (mode 0600).
//! - stdout carries JSON lines: `{"event":"connected"}`,
//!   `{"event":"disconnected","reason":"..."}`, `{"event":"logged_out"}`.
//! - Exit code 0: stopped on purpose; 40: logged out; anything else: crash.
//! - Stop: SIGTERM, then SIGKILL after the grace period. The auth directory
//!   is removed once the process is gone.
//! - Session state (when the supervisor keeps it): AUTH_DIR is the bot's
//!   saved folder, restored whole before the start; while the bot runs the
//!   folder is saved when it changed (checked every `BOT_STATE_SYNC_SECS`),
//!   and always once more after the process is gone.
//! - stdin is a pipe the node holds open: at end-of-file (the node died,
//!   even by SIGKILL) the bot must exit, so no orphan keeps running a bot
//!   that another node may take over.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{BotDriver, BotEvent, BotSpec, DriverError, DriverEvent, RunningBot, SessionSync};
use crate::state;

/// Exit code meaning "the credentials were logged out".
pub const EXIT_LOGGED_OUT: i32 = 40;

#[derive(Debug, Clone)]
pub struct ProcessDriver {
    program: String,
    args: Vec<String>,
    auth_root: PathBuf,
    grace: Duration,
}

impl ProcessDriver {
    /// `command` is BOT_COMMAND; each bot gets `auth_root/<bot id>`.
    pub fn new(command: &str, auth_root: impl Into<PathBuf>, grace: Duration) -> Result<Self, DriverError> {
        let mut words = command.split_whitespace().map(str::to_owned);
        let program = words.next().ok_or_else(|| DriverError("BOT_COMMAND is empty".into()))?;
        let auth_root = auth_root.into();
        create_private_dir(&auth_root)?;
        Ok(Self { program, args: words.collect(), auth_root, grace })
    }
}

fn create_private_dir(path: &Path) -> Result<(), DriverError> {
    state::create_private_dir(path).map_err(|e| DriverError(e.to_string()))
}

/// Lays out AUTH_DIR before a start: the saved session folder when there is
/// one, else (or if it cannot be restored) just the registered creds.json.
async fn prepare_auth_dir(auth_dir: &Path, spec: &BotSpec) -> Result<(), DriverError> {
    let _ = std::fs::remove_dir_all(auth_dir);
    if let Some(session) = &spec.session
        && let Some(archive) = &session.restore
    {
        match state::restore(archive, auth_dir, session.limit) {
            Ok(()) if auth_dir.join("creds.json").is_file() => return Ok(()),
            Ok(()) => {}
            Err(err) => {
                tracing::warn!(bot = %spec.bot_id, error = %err, "saved session state not restored; starting clean");
                session.sink.refuse(&err).await;
            }
        }
    }
    create_private_dir(auth_dir)?;
    state::write_private_file(&auth_dir.join("creds.json"), spec.credentials.creds_json().as_bytes())
        .map_err(|e| DriverError(e.to_string()))
}

/// Saves the folder if it changed since `last` (the digest of what was
/// saved last, updated on success). Refusals are recorded once per
/// distinct reason, until a save succeeds again.
async fn sync_folder(
    auth_dir: &Path,
    session: &SessionSync,
    last: &mut Option<[u8; 32]>,
    refused: &mut Option<String>,
) {
    let (dir, limit) = (auth_dir.to_path_buf(), session.limit);
    let taken = tokio::task::spawn_blocking(move || state::snapshot(&dir, limit)).await;
    match taken {
        Ok(Ok(snapshot)) => {
            if *last == Some(snapshot.digest) {
                return;
            }
            if session.sink.save(&snapshot).await {
                *last = Some(snapshot.digest);
                *refused = None;
            }
        }
        Ok(Err(err)) => {
            let reason = err.to_string();
            if refused.as_ref() != Some(&reason) {
                session.sink.refuse(&err).await;
                *refused = Some(reason);
            }
        }
        Err(_) => {}
    }
}

#[derive(Deserialize)]
struct StatusLine {
    event: String,
    #[serde(default)]
    reason: Option<String>,
}

fn parse_status_line(line: &str) -> Option<BotEvent> {
    let status: StatusLine = serde_json::from_str(line.trim()).ok()?;
    match status.event.as_str() {
        "connected" => Some(BotEvent::Connected),
        "disconnected" => {
            Some(BotEvent::Disconnected { reason: status.reason.unwrap_or_else(|| "disconnected".into()) })
        }
        "logged_out" => Some(BotEvent::LoggedOut { reason: None }),
        _ => None,
    }
}

struct ProcessBot {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    auth_dir: PathBuf,
}

#[async_trait]
impl RunningBot for ProcessBot {
    async fn stop(self: Box<Self>) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let _ = std::fs::remove_dir_all(&self.auth_dir);
    }
}

/// Waits for the process; on a stop request: SIGTERM, grace, SIGKILL.
async fn supervise(
    mut child: Child,
    grace: Duration,
    mut stop: oneshot::Receiver<()>,
) -> Option<std::process::ExitStatus> {
    tokio::select! {
        status = child.wait() => status.ok(),
        _ = &mut stop => {
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => {
                    let _ = child.kill().await;
                    None
                }
            }
        }
    }
}

#[async_trait]
impl BotDriver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(
        &self,
        spec: BotSpec,
        events: mpsc::UnboundedSender<DriverEvent>,
    ) -> Result<Box<dyn RunningBot>, DriverError> {
        let auth_dir = self.auth_root.join(spec.bot_id.as_str());
        prepare_auth_dir(&auth_dir, &spec).await?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env("BOT_ID", spec.bot_id.as_str())
            .env("PHONE_NUMBER", spec.phone.as_str())
            .env("AUTH_DIR", &auth_dir)
            .env("SERVER_NAME", spec.server.as_str())
            .env("CREDENTIALS_VERSION", spec.version.to_string())
            // Held open by the node; EOF tells the bot its node is gone.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            // A dropped handle (e.g. the node panicking) still ends the process.
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&auth_dir);
                DriverError(format!("cannot start {}: {e}", self.program))
            })?;
        let stdout = child.stdout.take();
        let lifeline = child.stdin.take();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (bot_id, generation, grace) = (spec.bot_id.clone(), spec.generation, self.grace);
        let (session, folder) = (spec.session.clone(), auth_dir.clone());
        let task = tokio::spawn(async move {
            let send = |event| {
                let _ = events.send(DriverEvent { bot_id: bot_id.clone(), generation, event });
            };
            let reader = async {
                if let Some(stdout) = stdout {
                    let mut lines = BufReader::new(stdout).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(event) = parse_status_line(&line) {
                            send(event);
                        }
                    }
                }
            };
            // The restored folder counts as saved: it is what the database holds.
            let (mut saved, mut refused) = (None, None);
            if let Some(session) = &session
                && session.restore.is_some()
            {
                let (dir, limit) = (folder.clone(), session.limit);
                saved = tokio::task::spawn_blocking(move || state::snapshot(&dir, limit).ok().map(|s| s.digest))
                    .await
                    .ok()
                    .flatten();
            }
            let syncing = async {
                let Some(session) = &session else { return std::future::pending().await };
                let mut every = tokio::time::interval(session.every);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await;
                loop {
                    every.tick().await;
                    sync_folder(&folder, session, &mut saved, &mut refused).await;
                }
            };
            let status = tokio::select! {
                (status, ()) = async { tokio::join!(supervise(child, grace, stop_rx), reader) } => status,
                () = syncing => None,
            };
            drop(lifeline);
            // Once more with the process gone: what it wrote last is kept.
            if let Some(session) = &session {
                sync_folder(&folder, session, &mut saved, &mut refused).await;
            }
            let code = status.and_then(|s| s.code());
            match code {
                Some(EXIT_LOGGED_OUT) => send(BotEvent::LoggedOut { reason: None }),
                _ => send(BotEvent::Exited {
                    code,
                    error: match code {
                        Some(0) => None,
                        Some(code) => Some(format!("exited with code {code}")),
                        None => Some("killed by a signal".into()),
                    },
                }),
            }
        });
        Ok(Box::new(ProcessBot { stop: stop_tx, task, auth_dir }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(r#"{"event":"connected"}"#), Some(BotEvent::Connected));
        assert_eq!(
            parse_status_line(r#"{"event":"disconnected","reason":"stream error"}"#),
            Some(BotEvent::Disconnected { reason: "stream error".into() })
        );
        assert_eq!(parse_status_line(r#"{"event":"logged_out"}"#), Some(BotEvent::LoggedOut { reason: None }));
        assert_eq!(parse_status_line("plain log line"), None);
        assert_eq!(parse_status_line(r#"{"event":"dancing"}"#), None);
    }
}
