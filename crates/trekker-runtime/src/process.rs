//! The `process` driver: one OS process tree per bot (e.g. an existing
//! Baileys bot behind a small wrapper). The contract is in
//! docs/bot-process-contract.md:
//!
//! - BOT_COMMAND is split on whitespace (no shell) and run with only the
//!   contract's environment: BOT_ID, PHONE_NUMBER, AUTH_DIR, SERVER_NAME,
//!   CREDENTIALS_VERSION, the send governor's figures (BOT_SENDS_PER_MIN,
//!   BOT_SEND_BURST, BOT_NEW_CONTACTS_PER_DAY, BOT_WARMUP_DAYS,
//!   BOT_PAIRED_AT), plus PATH, HOME, LANG and TZ. AUTH_DIR (mode 0700)
//!   holds `creds.json` (mode 0600).
//! - stdout carries JSON lines: `{"event":"connected"}`,
//!   `{"event":"disconnected","reason":"..."}`, `{"event":"logged_out"}`,
//!   `{"event":"held","reason":"..."}` (WhatsApp limited its sends).
//!   Every line of stdout and stderr goes to the bot's ring
//!   ([`crate::output`]), never to the node's own log.
//! - Exit code 0: stopped on purpose; 40: logged out; anything else: crash.
//! - Stop: SIGTERM to every process of the bot, then SIGKILL to all of them
//!   after the grace period; whatever is left when the bot's first process
//!   ends is killed too. The auth directory is removed once they are gone.
//! - Session state (when the supervisor keeps it): AUTH_DIR is the bot's
//!   saved folder, restored whole before the start; while the bot runs the
//!   folder is saved when it changed (checked every `BOT_STATE_SYNC_SECS`),
//!   and always once more after the process is gone.
//! - stdin is a pipe the node holds open: at end-of-file (the node died,
//!   even by SIGKILL) the bot must exit, so no orphan keeps running a bot
//!   that another node may take over.
//!
//! With a [`Sandbox`] (BOT_SANDBOX=on) each run gets a uid and a cgroup of
//! its own ([`crate::sandbox`]); without one the bot runs as the node's user
//! in a process group of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::{AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use trekker_domain::BotId;
use trekker_domain::governor::SendPolicy;

use crate::driver::{BotDriver, BotEvent, BotSpec, DriverError, DriverEvent, RunningBot, SessionSync};
use crate::output::{self, BotLogs, LogStream};
use crate::sandbox::{Cell, Sandbox, Usage};
use crate::state;

/// Exit code meaning "the credentials were logged out".
pub const EXIT_LOGGED_OUT: i32 = 40;
/// At most one status a second reaches the supervisor per bot; a flood of
/// status lines is coalesced to the latest.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often a running bot's usage and folder size are measured.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// Output read after the bot's first process ended (then reading stops,
/// whoever still holds the pipes).
const DRAIN: Duration = Duration::from_millis(200);

/// What one running bot uses (`GET /api/admin/bots/{id}`, `resources`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub memory_bytes: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub pids: Option<u64>,
    pub disk_bytes: u64,
    pub oom_kills: u64,
}

/// What all bots of a node use together (for `/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub memory_bytes: u64,
    pub cpu_seconds: f64,
    pub pids: u64,
    pub disk_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct ProcessDriver {
    program: String,
    args: Vec<String>,
    auth_root: PathBuf,
    grace: Duration,
    sandbox: Option<Arc<Sandbox>>,
    logs: BotLogs,
    resources: Arc<Mutex<HashMap<BotId, Resources>>>,
    /// Largest AUTH_DIR while running (BOT_DISK_MB); none: not watched.
    disk_limit: Option<u64>,
    /// The limits the bot is asked to keep (it enforces them itself).
    send_policy: SendPolicy,
}

impl ProcessDriver {
    /// `command` is BOT_COMMAND; each bot gets `auth_root/<bot id>`. Bots
    /// run as the node's user until [`Self::with_sandbox`].
    pub fn new(command: &str, auth_root: impl Into<PathBuf>, grace: Duration) -> Result<Self, DriverError> {
        let mut words = command.split_whitespace().map(str::to_owned);
        let program = words.next().ok_or_else(|| DriverError("BOT_COMMAND is empty".into()))?;
        let auth_root = auth_root.into();
        create_private_dir(&auth_root)?;
        Ok(Self {
            program,
            args: words.collect(),
            auth_root,
            grace,
            sandbox: None,
            logs: BotLogs::new(),
            resources: Arc::default(),
            disk_limit: None,
            send_policy: SendPolicy::default(),
        })
    }

    /// Runs every bot in `sandbox` (its own uid, cgroup and view), with
    /// AUTH_DIR capped at the sandbox's disk limit.
    pub fn with_sandbox(mut self, sandbox: Arc<Sandbox>) -> Self {
        self.disk_limit = Some(sandbox.config().disk_bytes);
        self.sandbox = Some(sandbox);
        self
    }

    /// The send governor's figures every bot gets in its environment.
    pub fn with_send_policy(mut self, policy: SendPolicy) -> Self {
        self.send_policy = policy;
        self
    }

    /// Caps AUTH_DIR while a bot runs (without a sandbox too).
    pub fn with_disk_limit(mut self, bytes: u64) -> Self {
        self.disk_limit = Some(bytes);
        self
    }

    /// The bots' kept output.
    pub fn logs(&self) -> BotLogs {
        self.logs.clone()
    }

    /// What a bot running here uses now; `None` when it does not run here.
    pub fn resources(&self, bot: &BotId) -> Option<Resources> {
        self.resources.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(bot).copied()
    }

    /// What every bot running here uses, summed.
    pub fn totals(&self) -> Totals {
        let resources = self.resources.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        resources.values().fold(Totals::default(), |sum, r| Totals {
            memory_bytes: sum.memory_bytes + r.memory_bytes.unwrap_or(0),
            cpu_seconds: sum.cpu_seconds + r.cpu_seconds.unwrap_or(0.0),
            pids: sum.pids + r.pids.unwrap_or(0),
            disk_bytes: sum.disk_bytes + r.disk_bytes,
        })
    }

    /// The contract's environment, and nothing of the node's.
    fn environment(&self, spec: &BotSpec, auth_dir: &Path) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("BOT_ID", spec.bot_id.as_str().to_owned()),
            ("PHONE_NUMBER", spec.phone.as_str().to_owned()),
            ("AUTH_DIR", auth_dir.to_string_lossy().into_owned()),
            ("SERVER_NAME", spec.server.as_str().to_owned()),
            ("CREDENTIALS_VERSION", spec.version.to_string()),
            ("BOT_SENDS_PER_MIN", self.send_policy.sends_per_min.to_string()),
            ("BOT_SEND_BURST", self.send_policy.send_burst.to_string()),
            ("BOT_NEW_CONTACTS_PER_DAY", self.send_policy.new_contacts_per_day.to_string()),
            ("BOT_WARMUP_DAYS", self.send_policy.warmup_days.to_string()),
            ("BOT_PAIRED_AT", spec.paired_at.to_string()),
        ];
        if self.sandbox.is_some() {
            env.extend([("PATH", crate::sandbox::PATH.to_owned()), ("HOME", "/tmp".to_owned())]);
        } else {
            for name in ["PATH", "HOME"] {
                env.extend(std::env::var(name).ok().map(|v| (name, v)));
            }
        }
        for name in ["LANG", "TZ"] {
            env.extend(std::env::var(name).ok().map(|v| (name, v)));
        }
        env
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

fn parse_status_line(line: &[u8]) -> Option<BotEvent> {
    let status: StatusLine = serde_json::from_slice(line.trim_ascii()).ok()?;
    match status.event.as_str() {
        "connected" => Some(BotEvent::Connected),
        "disconnected" => Some(BotEvent::Disconnected {
            reason: status.reason.as_deref().map_or_else(|| "disconnected".into(), output::reason),
        }),
        "logged_out" => Some(BotEvent::LoggedOut { reason: None }),
        "held" => Some(BotEvent::Held {
            reason: status.reason.as_deref().map_or_else(|| "held by WhatsApp".into(), output::reason),
        }),
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
        let dir = self.auth_dir;
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
    }
}

/// The processes of one run: a sandbox cell (its cgroup) or a process
/// group of its own.
struct Tree {
    /// The first process (bwrap's monitor in a sandbox).
    leader: Option<i32>,
    cell: Option<Cell>,
}

impl Tree {
    /// SIGTERM to every process of the bot (in a sandbox, not to bwrap's
    /// monitor: it would take the sandbox down at once).
    fn terminate(&self) {
        match (&self.cell, self.leader) {
            (Some(cell), leader) => cell.cgroup.signal(Signal::SIGTERM, leader),
            (None, Some(leader)) => {
                let _ = killpg(Pid::from_raw(leader), Signal::SIGTERM);
            }
            (None, None) => {}
        }
    }

    /// SIGKILL to every process of the bot, until none is left.
    async fn kill_all(&self) {
        match (&self.cell, self.leader) {
            (Some(cell), _) => {
                let cgroup = cell.cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
            }
            (None, Some(leader)) => {
                let _ = killpg(Pid::from_raw(leader), Signal::SIGKILL);
            }
            (None, None) => {}
        }
    }

    fn usage(&self) -> Option<Usage> {
        self.cell.as_ref().map(|c| c.cgroup.usage())
    }
}

/// How a run ended before the first process exited by itself.
enum Ending {
    Exited(Option<std::process::ExitStatus>),
    Stopped,
    OverDisk(u64),
}

/// Reads one stream of the bot into its ring; stdout's status lines also
/// go to `status` (the latest wins).
async fn read_stream(
    stream: impl AsyncRead + Unpin,
    kind: LogStream,
    bot: BotId,
    logs: BotLogs,
    status: Option<watch::Sender<Option<BotEvent>>>,
) {
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    while let Ok(Some(line)) = output::next_line(&mut reader).await {
        if let Some(status) = &status
            && !line.truncated
            && let Some(event) = parse_status_line(&line.bytes)
        {
            status.send_replace(Some(event));
        }
        logs.push(&bot, kind, &line);
    }
}

/// Sends the latest status to the supervisor, at most one per [`STATUS_EVERY`].
async fn forward_status(mut latest: watch::Receiver<Option<BotEvent>>, send: impl Fn(BotEvent)) {
    while latest.changed().await.is_ok() {
        let event = latest.borrow_and_update().clone();
        if let Some(event) = event {
            send(event);
        }
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// What a run uses: its cgroup's figures (a sandbox's; none without one)
/// and its folder's size.
fn resources_of(usage: Option<Usage>, memory_limit: Option<u64>, disk_bytes: u64) -> Resources {
    Resources {
        memory_bytes: usage.map(|u| u.memory_bytes),
        memory_limit_bytes: memory_limit,
        cpu_seconds: usage.map(|u| u.cpu_nanos as f64 / 1e9),
        pids: usage.map(|u| u.pids),
        disk_bytes,
        oom_kills: usage.map_or(0, |u| u.oom_kills),
    }
}

/// Whether the kernel killed something of the run for its memory limit.
fn killed_for_memory(usage: Option<Usage>) -> bool {
    usage.is_some_and(|u| u.oom_kills > 0)
}

/// Why the run ended, for the supervisor and the bot's log.
fn describe(
    status: Option<std::process::ExitStatus>,
    sandboxed: bool,
    oom: bool,
) -> (Option<i32>, Option<i32>, String) {
    use std::os::unix::process::ExitStatusExt;
    let (mut code, mut signal) = (status.and_then(|s| s.code()), status.and_then(|s| s.signal()));
    // bwrap reports a command killed by a signal as 128 + the signal.
    if sandboxed && let Some(c) = code.filter(|c| (129..=192).contains(c)) {
        (code, signal) = (None, Some(c - 128));
    }
    let reason = if oom {
        crate::driver::OUT_OF_MEMORY.to_owned()
    } else {
        match (code, signal) {
            (Some(0), _) => "exited with code 0".to_owned(),
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => {
                let name = Signal::try_from(s).map(|s| s.as_str()).unwrap_or("unknown");
                format!("killed by signal {s} ({name})")
            }
            (None, None) => "killed by a signal".to_owned(),
        }
    };
    (code, signal, reason)
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
        let env = self.environment(&spec, &auth_dir);
        let cleanup = |error: String| {
            let _ = std::fs::remove_dir_all(&auth_dir);
            DriverError(error)
        };
        let (mut command, cell) = match &self.sandbox {
            Some(sandbox) => {
                let taken = sandbox.clone();
                let cell = tokio::task::spawn_blocking(move || taken.cell())
                    .await
                    .map_err(|e| cleanup(e.to_string()))?
                    .map_err(|e| cleanup(e.to_string()))?;
                sandbox.give_folder(&cell, &auth_dir).map_err(|e| cleanup(e.to_string()))?;
                (sandbox.command(&cell, &self.program, &self.args, &auth_dir, &env), Some(cell))
            }
            None => {
                let mut command = Command::new(&self.program);
                command.args(&self.args).env_clear().envs(env.iter().map(|(k, v)| (*k, v))).process_group(0);
                (command, None)
            }
        };
        let child = command
            // Held open by the node; EOF tells the bot its node is gone.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A dropped handle (e.g. the node panicking) still ends the process.
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                drop(cell);
                return Err(cleanup(format!("cannot start {}: {e}", self.program)));
            }
        };
        let tree = Tree { leader: child.id().and_then(|id| i32::try_from(id).ok()), cell };
        let (stop_tx, stop_rx) = oneshot::channel();
        let run = Run {
            bot_id: spec.bot_id.clone(),
            generation: spec.generation,
            grace: self.grace,
            session: spec.session.clone(),
            folder: auth_dir.clone(),
            logs: self.logs.clone(),
            resources: self.resources.clone(),
            disk_limit: self.disk_limit,
            memory_limit: self.sandbox.as_ref().map(|s| s.config().limits.memory_bytes),
            events,
        };
        self.logs.node_line(&spec.bot_id, &format!("started (credentials version {})", spec.version));
        let streams = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let task = tokio::spawn(run.watch(child, tree, streams, stop_rx));
        Ok(Box::new(ProcessBot { stop: stop_tx, task, auth_dir }))
    }
}

/// Everything one run's watcher needs.
struct Run {
    bot_id: BotId,
    generation: u64,
    grace: Duration,
    session: Option<SessionSync>,
    folder: PathBuf,
    logs: BotLogs,
    resources: Arc<Mutex<HashMap<BotId, Resources>>>,
    disk_limit: Option<u64>,
    memory_limit: Option<u64>,
    events: mpsc::UnboundedSender<DriverEvent>,
}

type Streams =
    (Option<tokio::process::ChildStdin>, Option<tokio::process::ChildStdout>, Option<tokio::process::ChildStderr>);

impl Run {
    fn send(&self, event: BotEvent) {
        let _ = self.events.send(DriverEvent { bot_id: self.bot_id.clone(), generation: self.generation, event });
    }

    /// Watches the run until it is over: output, status, limits, session
    /// folder, stop requests. Never waits on the bot's pipes.
    async fn watch(self, mut child: Child, tree: Tree, streams: Streams, mut stop: oneshot::Receiver<()>) {
        let (lifeline, stdout, stderr) = streams;
        let (status_tx, status_rx) = watch::channel(None);
        let mut readers = tokio::task::JoinSet::new();
        if let Some(stdout) = stdout {
            readers.spawn(read_stream(
                stdout,
                LogStream::Stdout,
                self.bot_id.clone(),
                self.logs.clone(),
                Some(status_tx),
            ));
        }
        if let Some(stderr) = stderr {
            readers.spawn(read_stream(stderr, LogStream::Stderr, self.bot_id.clone(), self.logs.clone(), None));
        }
        let forwarder = {
            let (events, bot_id, generation) = (self.events.clone(), self.bot_id.clone(), self.generation);
            tokio::spawn(forward_status(status_rx, move |event| {
                let _ = events.send(DriverEvent { bot_id: bot_id.clone(), generation, event });
            }))
        };

        // The restored folder counts as saved: it is what the database holds.
        let (mut saved, mut refused) = (None, None);
        if let Some(session) = &self.session
            && session.restore.is_some()
        {
            let (dir, limit) = (self.folder.clone(), session.limit);
            saved = tokio::task::spawn_blocking(move || state::snapshot(&dir, limit).ok().map(|s| s.digest))
                .await
                .ok()
                .flatten();
        }
        let ending = tokio::select! {
            status = child.wait() => Ending::Exited(status.ok()),
            _ = &mut stop => Ending::Stopped,
            over = self.watch_usage(&tree) => Ending::OverDisk(over),
            () = self.sync_loop(&mut saved, &mut refused) => Ending::Stopped,
        };
        let (status, over_disk) = match ending {
            Ending::Exited(status) => (status, None),
            Ending::Stopped => (self.terminate(&mut child, &tree).await, None),
            Ending::OverDisk(bytes) => (self.terminate(&mut child, &tree).await, Some(bytes)),
        };
        // Whatever the first process left behind ends with it.
        tree.kill_all().await;
        drop(lifeline);
        let _ = tokio::time::timeout(DRAIN, async { while readers.join_next().await.is_some() {} }).await;
        readers.abort_all();
        forwarder.abort();
        let oom = killed_for_memory(tree.usage());
        self.resources.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.bot_id);
        if let Some(cell) = tree.cell {
            let _ = tokio::task::spawn_blocking(move || drop(cell)).await;
        }
        // Once more with the process gone: what it wrote last is kept.
        if let Some(session) = &self.session {
            sync_folder(&self.folder, session, &mut saved, &mut refused).await;
        }
        let (code, signal, mut reason) = describe(status, self.memory_limit.is_some(), oom);
        if let Some(bytes) = over_disk {
            let limit = self.disk_limit.unwrap_or_default();
            reason = format!("AUTH_DIR holds {} MiB, over BOT_DISK_MB ({} MiB)", bytes >> 20, limit >> 20);
        }
        self.logs.node_line(&self.bot_id, &format!("ended: {reason}"));
        // What the bot said last on stderr often says why (already escaped).
        if code != Some(0)
            && let Some(last) = self.logs.tail_of(&self.bot_id, LogStream::Stderr)
        {
            reason = format!("{reason}; last on stderr: {}", output::escape(&last, 160));
        }
        self.logs.retire(&self.bot_id);
        match (code, over_disk, oom) {
            (Some(EXIT_LOGGED_OUT), None, false) => self.send(BotEvent::LoggedOut { reason: None }),
            (Some(0), None, false) => self.send(BotEvent::Exited { code, signal, error: None }),
            _ => self.send(BotEvent::Exited { code, signal, error: Some(reason) }),
        }
    }

    /// SIGTERM to the bot's processes, then SIGKILL after the grace period.
    async fn terminate(&self, child: &mut Child, tree: &Tree) -> Option<std::process::ExitStatus> {
        tree.terminate();
        match tokio::time::timeout(self.grace, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                tree.kill_all().await;
                let _ = child.kill().await;
                child.wait().await.ok()
            }
        }
    }

    /// Measures the run every [`WATCH_EVERY`]; ends (with the size) when
    /// AUTH_DIR grew past the disk limit.
    async fn watch_usage(&self, tree: &Tree) -> u64 {
        // The first look once the bot's processes are there.
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + WATCH_EVERY, WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let (dir, limit) = (self.folder.clone(), self.disk_limit);
            let measured = tokio::task::spawn_blocking(move || state::disk_usage(&dir, limit.unwrap_or(u64::MAX)))
                .await
                .unwrap_or_default();
            let resources = resources_of(tree.usage(), self.memory_limit, measured);
            self.resources
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(self.bot_id.clone(), resources);
            if let Some(limit) = self.disk_limit
                && measured > limit
            {
                return measured;
            }
        }
    }

    /// Saves the folder when it changed, every sync interval; never ends.
    async fn sync_loop(&self, saved: &mut Option<[u8; 32]>, refused: &mut Option<String>) {
        let Some(session) = &self.session else { return std::future::pending().await };
        let mut every = tokio::time::interval(session.every);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            sync_folder(&self.folder, session, saved, refused).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::test_spec as spec;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(br#"{"event":"connected"}"#), Some(BotEvent::Connected));
        assert_eq!(
            parse_status_line(br#"{"event":"disconnected","reason":"stream error"}"#),
            Some(BotEvent::Disconnected { reason: "stream error".into() })
        );
        assert_eq!(parse_status_line(br#"{"event":"logged_out"}"#), Some(BotEvent::LoggedOut { reason: None }));
        assert_eq!(
            parse_status_line(br#"{"event":"held","reason":"WhatsApp answered 463"}"#),
            Some(BotEvent::Held { reason: "WhatsApp answered 463".into() })
        );
        assert_eq!(
            parse_status_line(br#"{"event":"held"}"#),
            Some(BotEvent::Held { reason: "held by WhatsApp".into() })
        );
        assert_eq!(parse_status_line(b"plain log line"), None);
        assert_eq!(parse_status_line(br#"{"event":"dancing"}"#), None);
        let huge = format!(r#"{{"event":"disconnected","reason":"{}\u001b[2J"}}"#, "x".repeat(100_000));
        let Some(BotEvent::Disconnected { reason }) = parse_status_line(huge.as_bytes()) else { panic!() };
        assert_eq!(reason.chars().count(), output::MAX_REASON_CHARS + 1, "a reason is cut");
    }

    /// A sandboxed run's cgroup figures become its resources (CPU in
    /// seconds), an out-of-memory kill is noticed, and the node's totals add
    /// every bot's figures up.
    #[test]
    fn cgroup_figures_become_resources_and_add_up() {
        let usage = Usage { memory_bytes: 3 << 20, cpu_nanos: 2_500_000_000, pids: 4, oom_kills: 0 };
        let one = resources_of(Some(usage), Some(512 << 20), 9000);
        assert_eq!(
            one,
            Resources {
                memory_bytes: Some(3 << 20),
                memory_limit_bytes: Some(512 << 20),
                cpu_seconds: Some(2.5),
                pids: Some(4),
                disk_bytes: 9000,
                oom_kills: 0,
            }
        );
        assert_eq!(resources_of(None, None, 7), Resources { disk_bytes: 7, ..Resources::default() });
        assert!(!killed_for_memory(Some(usage)) && !killed_for_memory(None));
        assert!(killed_for_memory(Some(Usage { oom_kills: 1, ..usage })));

        let driver = ProcessDriver::new("true", tempfile::tempdir().unwrap().path(), Duration::from_secs(1)).unwrap();
        let other =
            Resources { memory_bytes: Some(1 << 20), cpu_seconds: Some(0.5), pids: Some(2), disk_bytes: 1000, ..one };
        driver.resources.lock().unwrap().insert(BotId::parse("bot-a").unwrap(), one);
        driver.resources.lock().unwrap().insert(BotId::parse("bot-b").unwrap(), other);
        driver.resources.lock().unwrap().insert(BotId::parse("bot-c").unwrap(), resources_of(None, None, 10));
        assert_eq!(driver.totals(), Totals { memory_bytes: 4 << 20, cpu_seconds: 3.0, pids: 6, disk_bytes: 10_010 },);
    }

    #[test]
    fn exits_are_described() {
        use std::os::unix::process::ExitStatusExt;
        let status = |raw| Some(std::process::ExitStatus::from_raw(raw));
        assert_eq!(describe(status(3 << 8), false, false), (Some(3), None, "exited with code 3".into()));
        assert_eq!(describe(status(9), false, false), (None, Some(9), "killed by signal 9 (SIGKILL)".into()));
        // bwrap's way of saying the bot was killed by SIGKILL.
        assert_eq!(describe(status(137 << 8), true, false).1, Some(9));
        assert_eq!(describe(status(137 << 8), true, true).2, "out of memory");
    }

    /// A bot run without a sandbox gets the contract's environment and
    /// nothing else of the node's, its registered creds.json in a private
    /// AUTH_DIR under a private root, and its output in the driver's ring.
    #[tokio::test]
    async fn a_started_bot_sees_the_contract_and_its_output_is_kept() {
        use std::os::unix::fs::PermissionsExt;

        let work = tempfile::tempdir().unwrap();
        let script = work.path().join("bot.sh");
        std::fs::write(
            &script,
            "env | cut -d= -f1 | sort | tr '\\n' ' '; echo\n\
             echo \"id=$BOT_ID phone=$PHONE_NUMBER server=$SERVER_NAME version=$CREDENTIALS_VERSION\"\n\
             stat -c 'auth=%a' \"$AUTH_DIR\"\n\
             head -c 1 \"$AUTH_DIR/creds.json\"; echo\n\
             echo \"limits=$BOT_SENDS_PER_MIN/$BOT_SEND_BURST/$BOT_NEW_CONTACTS_PER_DAY/$BOT_WARMUP_DAYS\" \
               \"since=$BOT_PAIRED_AT\"\n",
        )
        .unwrap();
        let root = work.path().join("bots/auth");
        let policy = SendPolicy { sends_per_min: 12, send_burst: 3, new_contacts_per_day: 40, warmup_days: 7 };
        let driver = ProcessDriver::new(&format!("sh {}", script.display()), &root, Duration::from_secs(2))
            .unwrap()
            .with_send_policy(policy);
        assert_eq!(std::fs::metadata(&root).unwrap().permissions().mode() & 0o777, 0o700, "a private root");

        let phone = "254700000777";
        let spec = spec("bot-env", phone, 2, None);
        let (events, mut received) = tokio::sync::mpsc::unbounded_channel();
        let running = driver.start(spec.clone(), events).await.unwrap();
        let exited = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let BotEvent::Exited { code, .. } = received.recv().await.unwrap().event {
                    return code;
                }
            }
        })
        .await
        .expect("the bot ends");
        running.stop().await;
        assert_eq!(exited, Some(0));

        let kept = driver.logs().tail(&spec.bot_id, 100);
        assert_eq!(kept[0].stream, LogStream::Node, "the node says when it started the bot");
        let lines: Vec<String> = kept.into_iter().filter(|l| l.stream == LogStream::Stdout).map(|l| l.text).collect();
        let names: Vec<&str> = lines[0].split_whitespace().collect();
        let contract = [
            "AUTH_DIR",
            "BOT_ID",
            "BOT_NEW_CONTACTS_PER_DAY",
            "BOT_PAIRED_AT",
            "BOT_SEND_BURST",
            "BOT_SENDS_PER_MIN",
            "BOT_WARMUP_DAYS",
            "CREDENTIALS_VERSION",
            "PHONE_NUMBER",
            "SERVER_NAME",
        ];
        // What the node passes on (PATH, HOME, LANG, TZ) and what sh sets itself.
        let allowed = ["HOME", "LANG", "OLDPWD", "PATH", "PWD", "SHLVL", "TZ", "_"];
        assert!(contract.iter().all(|name| names.contains(name)), "{names:?}");
        assert!(names.iter().all(|name| contract.contains(name) || allowed.contains(name)), "{names:?}");
        assert_eq!(lines[1], format!("id=bot-env phone={phone} server=SERVER3 version=2"));
        assert_eq!(lines[2], "auth=700");
        assert_eq!(lines[3], "{", "the registered creds.json is in AUTH_DIR");
        assert_eq!(lines[4], "limits=12/3/40/7 since=1800000000000", "the send governor's figures");
    }

    /// What each running bot's folder holds is measured and summed for the
    /// node (`/metrics`); a bot that stopped is no longer counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_bots_folder_is_measured_and_the_node_sums_them() {
        let work = tempfile::tempdir().unwrap();
        let script = work.path().join("bot.sh");
        std::fs::write(
            &script,
            "case \"$BOT_ID\" in bot-small) n=30000 ;; *) n=50000 ;; esac\n\
             head -c \"$n\" /dev/zero > \"$AUTH_DIR/blob\"\nexec sleep 60\n",
        )
        .unwrap();
        let command = format!("sh {}", script.display());
        let driver = ProcessDriver::new(&command, work.path().join("auth"), Duration::from_secs(2)).unwrap();
        let mut running = Vec::new();
        for (id, phone) in [("bot-small", "254700000781"), ("bot-large", "254700000782")] {
            let spec = spec(id, phone, 1, None);
            let (events, _received) = tokio::sync::mpsc::unbounded_channel();
            running.push((driver.start(spec, events).await.unwrap(), BotId::parse(id).unwrap()));
        }
        let disk = |id: &BotId| driver.resources(id).map(|r| r.disk_bytes);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !running.iter().zip([30_000, 50_000]).all(|((_, id), size)| disk(id).is_some_and(|d| d >= size)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never measured: {:?}",
                running.iter().map(|(_, id)| disk(id)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (small, large) = (disk(&running[0].1).unwrap(), disk(&running[1].1).unwrap());
        assert!(small < large, "{small} {large}");
        assert_eq!(driver.totals().disk_bytes, small + large);
        assert_eq!(driver.resources(&BotId::parse("bot-elsewhere").unwrap()), None);
        let (first, first_id) = running.remove(0);
        first.stop().await;
        assert_eq!(driver.resources(&first_id), None, "a stopped bot is not counted");
        assert_eq!(driver.totals().disk_bytes, large);
        for (bot, _) in running {
            bot.stop().await;
        }
    }

    /// A driver running `body` as a shell script, with `grace` to stop.
    fn script_driver(work: &Path, body: &str, grace: Duration) -> ProcessDriver {
        let script = work.join("bot.sh");
        std::fs::write(&script, body).unwrap();
        ProcessDriver::new(&format!("sh {}", script.display()), work.join("auth"), grace).unwrap()
    }

    /// The next event that ends the run (an exit or a logout), and the
    /// statuses seen before it.
    async fn ending(received: &mut mpsc::UnboundedReceiver<DriverEvent>) -> (BotEvent, Vec<BotEvent>) {
        let mut before = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match received.recv().await.expect("the driver's events").event {
                    event @ (BotEvent::Exited { .. } | BotEvent::LoggedOut { .. }) => return (event, before),
                    status => before.push(status),
                }
            }
        })
        .await
        .expect("the run ends")
    }

    /// Waits until the bot printed a line starting with `prefix`; its rest.
    async fn printed(driver: &ProcessDriver, bot: &BotId, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let lines = driver.logs().tail(bot, 100);
            if let Some(line) = lines.iter().find(|l| l.stream == LogStream::Stdout && l.text.starts_with(prefix)) {
                return line.text[prefix.len()..].to_owned();
            }
            assert!(tokio::time::Instant::now() < deadline, "the bot never printed {prefix:?}: {lines:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `pid` is a live process (a zombie waiting for its reaper is not).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    }

    async fn until_dead(pid: i32) -> bool {
        for _ in 0..250 {
            if !alive(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Records what the driver saved and refused of a session folder.
    #[derive(Default)]
    struct Recorder {
        saved: Mutex<Vec<state::Snapshot>>,
        refused: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl crate::driver::StateSink for Recorder {
        async fn save(&self, snapshot: &state::Snapshot) -> bool {
            self.saved.lock().unwrap().push(snapshot.clone());
            true
        }
        async fn refuse(&self, error: &state::StateError) {
            self.refused.lock().unwrap().push(error.to_string());
        }
    }

    /// Exit 40 is a logout, exit 0 a stop on purpose, anything else a
    /// crash whose reason carries what the bot said last on stderr.
    #[tokio::test]
    async fn the_exit_code_decides_what_the_supervisor_is_told() {
        let cases = [
            ("echo bye >&2; exit 40", BotEvent::LoggedOut { reason: None }),
            ("echo fine >&2; exit 0", BotEvent::Exited { code: Some(0), signal: None, error: None }),
            (
                "echo starting; echo 'cannot open db' >&2; exit 3",
                BotEvent::Exited {
                    code: Some(3),
                    signal: None,
                    error: Some("exited with code 3; last on stderr: cannot open db".into()),
                },
            ),
        ];
        for (body, expected) in cases {
            let work = tempfile::tempdir().unwrap();
            let driver = script_driver(work.path(), body, Duration::from_secs(5));
            assert_eq!(driver.name(), "process");
            let (events, mut received) = mpsc::unbounded_channel();
            let running = driver.start(spec("bot-exit", "254700000791", 1, None), events).await.unwrap();
            assert_eq!(ending(&mut received).await.0, expected, "{body}");
            running.stop().await;
        }
    }

    /// Status lines on stdout reach the supervisor; a line cut at the
    /// length limit is never read as one, whatever it starts with.
    #[tokio::test]
    async fn status_lines_on_stdout_reach_the_supervisor_but_cut_ones_do_not() {
        let work = tempfile::tempdir().unwrap();
        let padding = " ".repeat(output::MAX_LINE_BYTES);
        let body = format!(
            "echo '{{\"event\":\"logged_out\"}}{padding}'\necho '{{\"event\":\"connected\"}}'\nexec sleep 60\n"
        );
        let driver = script_driver(work.path(), &body, Duration::from_secs(5));
        let (events, mut received) = mpsc::unbounded_channel();
        let running = driver.start(spec("bot-status", "254700000792", 1, None), events).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(20), received.recv()).await.expect("a status").unwrap();
        running.stop().await;
        assert_eq!(first.event, BotEvent::Connected);
    }

    /// AUTH_DIR may reach BOT_DISK_MB; past it the bot is stopped, and its
    /// last error says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bot_whose_folder_grows_past_the_disk_limit_is_stopped() {
        // The stop is decided at the measurement that first sees the whole
        // file: the run ends then, or it goes on measured full.
        let run = |name: &'static str, limit: Option<u64>| async move {
            let work = tempfile::tempdir().unwrap();
            let body = "head -c 40000 /dev/urandom > \"$AUTH_DIR/blob\"\nexec sleep 60\n";
            let mut driver = script_driver(work.path(), body, Duration::from_secs(5));
            if let Some(bytes) = limit {
                driver = driver.with_disk_limit(bytes);
            }
            let bot = BotId::parse(name).unwrap();
            let (events, mut received) = mpsc::unbounded_channel();
            let running = driver.start(spec(name, "254700000797", 1, None), events).await.unwrap();
            let deadline = tokio::time::Instant::now() + WATCH_EVERY * 5;
            let outcome = loop {
                if let Ok(DriverEvent { event: ended @ BotEvent::Exited { .. }, .. }) = received.try_recv() {
                    break Err(ended);
                }
                if let Some(size) = driver.resources(&bot).map(|r| r.disk_bytes).filter(|size| *size >= 40_000) {
                    if limit.is_none() {
                        break Ok(size);
                    }
                    // Measured full: the stop, if any, is on its way.
                    let stop = tokio::time::timeout(WATCH_EVERY, async {
                        while let Some(event) = received.recv().await {
                            if let BotEvent::Exited { .. } = event.event {
                                return event.event;
                            }
                        }
                        std::future::pending().await
                    });
                    break stop.await.map_or(Ok(size), Err);
                }
                assert!(tokio::time::Instant::now() < deadline, "{name} was never measured");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            running.stop().await;
            outcome
        };
        let size = run("bot-unlimited", None).await.expect("no limit, no stop");
        let (at_limit, past_limit) = tokio::join!(run("bot-at-limit", Some(size)), run("bot-past", Some(size - 1)));
        assert_eq!(at_limit, Ok(size), "reaching the limit is allowed");
        let Err(BotEvent::Exited { error: Some(reason), .. }) = past_limit else {
            panic!("a bot past the limit is stopped: {past_limit:?}")
        };
        assert!(reason.starts_with("AUTH_DIR holds 0 MiB, over BOT_DISK_MB (0 MiB)"), "{reason}");
    }

    /// Stop sends SIGTERM first: a bot that handles it ends on its own terms.
    #[tokio::test]
    async fn stop_lets_a_bot_that_handles_sigterm_end_cleanly() {
        let work = tempfile::tempdir().unwrap();
        let body = "trap 'echo bye; exit 0' TERM\necho ready\nwhile :; do sleep 0.1; done\n";
        let driver = script_driver(work.path(), body, Duration::from_secs(20));
        let bot = BotId::parse("bot-polite").unwrap();
        let (events, mut received) = mpsc::unbounded_channel();
        let running = driver.start(spec(bot.as_str(), "254700000793", 1, None), events).await.unwrap();
        printed(&driver, &bot, "ready").await;
        running.stop().await;
        assert_eq!(ending(&mut received).await.0, BotEvent::Exited { code: Some(0), signal: None, error: None });
    }

    /// A bot that ignores SIGTERM is killed after the grace period, with
    /// every process it started; one that exits leaves no process behind.
    #[tokio::test]
    async fn nothing_a_bot_started_outlives_it() {
        let work = tempfile::tempdir().unwrap();
        let body = "trap '' TERM\nsleep 1000 &\necho \"child $!\"\nwhile :; do sleep 0.1; done\n";
        let driver = script_driver(work.path(), body, Duration::from_millis(300));
        let bot = BotId::parse("bot-stubborn").unwrap();
        let (events, mut received) = mpsc::unbounded_channel();
        let running = driver.start(spec(bot.as_str(), "254700000794", 1, None), events).await.unwrap();
        let child: i32 = printed(&driver, &bot, "child ").await.parse().unwrap();
        running.stop().await;
        let (ended, _) = ending(&mut received).await;
        let left = !until_dead(child).await;
        let _ = nix::sys::signal::kill(Pid::from_raw(child), Signal::SIGKILL);
        assert!(matches!(ended, BotEvent::Exited { code: None, signal: Some(9), .. }), "{ended:?}");
        assert!(!left, "the process the bot started was killed");

        let work = tempfile::tempdir().unwrap();
        let driver = script_driver(work.path(), "sleep 1000 &\necho \"child $!\"\nexit 0\n", Duration::from_secs(5));
        let bot = BotId::parse("bot-leaver").unwrap();
        let (events, mut received) = mpsc::unbounded_channel();
        let running = driver.start(spec(bot.as_str(), "254700000795", 1, None), events).await.unwrap();
        let child: i32 = printed(&driver, &bot, "child ").await.parse().unwrap();
        ending(&mut received).await;
        let left = !until_dead(child).await;
        let _ = nix::sys::signal::kill(Pid::from_raw(child), Signal::SIGKILL);
        running.stop().await;
        assert!(!left, "what the bot left running ended with it");
    }

    /// The session folder is saved when it changed (never twice the same),
    /// a folder over the limit is refused once for as long as it stays so,
    /// and a restored folder counts as saved.
    #[tokio::test]
    async fn a_session_folder_is_saved_when_it_changed_and_refused_once() {
        let run = |body: &'static str, limit: u64, restore: Option<Arc<Vec<u8>>>| async move {
            let work = tempfile::tempdir().unwrap();
            let driver = script_driver(work.path(), body, Duration::from_secs(5));
            let recorder = Arc::new(Recorder::default());
            let session = SessionSync { restore, sink: recorder.clone(), every: Duration::from_millis(50), limit };
            let (events, mut received) = mpsc::unbounded_channel();
            let running = driver.start(spec("bot-folder", "254700000796", 1, Some(session)), events).await.unwrap();
            ending(&mut received).await;
            running.stop().await;
            let saved = std::mem::take(&mut *recorder.saved.lock().unwrap());
            let refused = std::mem::take(&mut *recorder.refused.lock().unwrap());
            (saved, refused)
        };

        let (saved, refused) = run("sleep 0.3; echo one > \"$AUTH_DIR/a\"; sleep 0.5; exit 0", 1 << 20, None).await;
        assert!(refused.is_empty(), "{refused:?}");
        assert!(!saved.is_empty(), "the folder was saved");
        assert!(saved.windows(2).all(|pair| pair[0].digest != pair[1].digest), "{} saves", saved.len());
        let last = tempfile::tempdir().unwrap();
        state::restore(&saved.last().unwrap().archive, &last.path().join("f"), 1 << 20).unwrap();
        assert_eq!(std::fs::read_to_string(last.path().join("f/a")).unwrap(), "one\n");

        let body = "head -c 8000 /dev/zero > \"$AUTH_DIR/big\"; sleep 0.5; exit 0";
        let (_, refused) = run(body, 4096, None).await;
        assert_eq!(refused.len(), 1, "{refused:?}");

        let restored = {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("creds.json"), "{}").unwrap();
            Arc::new(state::snapshot(dir.path(), 1 << 20).unwrap().archive)
        };
        let (saved, _) = run("sleep 0.3; exit 0", 1 << 20, Some(restored)).await;
        assert!(saved.is_empty(), "the restored folder is what the database holds: {} saves", saved.len());
    }

    /// A saved folder comes back as it was; one that lost its creds.json
    /// (it cannot log in) gets the registered credentials.
    #[tokio::test]
    async fn a_saved_folder_is_restored_unless_it_lacks_its_credentials() {
        let work = tempfile::tempdir().unwrap();
        let saved = |files: &[(&str, &str)]| {
            let dir = tempfile::tempdir_in(work.path()).unwrap();
            for (name, text) in files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            Arc::new(state::snapshot(dir.path(), 1 << 20).unwrap().archive)
        };
        let phone = "254700000790";
        let registered = trekker_testkit::creds::credentials(phone, 1);
        for (archive, creds, kept) in [
            (saved(&[("creds.json", "{\"saved\":1}"), ("keys.json", "k")]), "{\"saved\":1}".to_owned(), true),
            (saved(&[("keys.json", "k")]), registered.creds_json().to_owned(), false),
        ] {
            let session = SessionSync {
                restore: Some(archive),
                sink: Arc::new(Recorder::default()),
                every: Duration::from_secs(10),
                limit: 1 << 20,
            };
            let spec = spec("bot-restore", phone, 1, Some(session));
            let auth = work.path().join("auth");
            prepare_auth_dir(&auth, &spec).await.unwrap();
            assert_eq!(std::fs::read_to_string(auth.join("creds.json")).unwrap(), creds);
            assert!(auth.join("keys.json").exists() || !kept, "the saved folder's other files are back");
        }
    }
}
