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
//! - stdin is a pipe the node holds open: at end-of-file (the node died,
//!   even by SIGKILL) the bot must exit, so no orphan keeps running a bot
//!   that another node may take over.

use std::io::Write;
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

use crate::driver::{BotDriver, BotEvent, BotSpec, DriverError, DriverEvent, RunningBot};

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
    std::fs::create_dir_all(path).map_err(|e| DriverError(format!("cannot create {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| DriverError(format!("cannot protect {}: {e}", path.display())))?;
    }
    Ok(())
}

fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), DriverError> {
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| DriverError(format!("cannot write {}: {e}", path.display())))?;
    file.write_all(contents).map_err(|e| DriverError(format!("cannot write {}: {e}", path.display())))
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
        "logged_out" => Some(BotEvent::LoggedOut),
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
        create_private_dir(&auth_dir)?;
        write_private_file(&auth_dir.join("creds.json"), spec.credentials.creds_json().as_bytes())?;
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
            let (status, ()) = tokio::join!(supervise(child, grace, stop_rx), reader);
            drop(lifeline);
            let code = status.and_then(|s| s.code());
            match code {
                Some(EXIT_LOGGED_OUT) => send(BotEvent::LoggedOut),
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
        assert_eq!(parse_status_line(r#"{"event":"logged_out"}"#), Some(BotEvent::LoggedOut));
        assert_eq!(parse_status_line("plain log line"), None);
        assert_eq!(parse_status_line(r#"{"event":"dancing"}"#), None);
    }
}
