//! The reference Baileys worker (`examples/baileys-worker`) under a real
//! node, without WhatsApp (nothing here can reach it): it starts from the
//! restored folder, reports `disconnected` when it cannot connect, exits at
//! stdin end-of-file and on SIGTERM, and the file it writes reaches the
//! database and comes back on its next start.
//!
//! Needs Node.js; the worker's pinned packages are installed with `npm ci`
//! on first use. Where that cannot be done these tests say loudly that they
//! were skipped, unless `TREKKER_REQUIRE_BAILEYS=1` (CI) makes it a failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use trekker_domain::BotId;
use trekker_runtime::ProcessDriver;
use trekker_testkit::creds;

use crate::support::{TestNode, eventually, fast_runtime, settings, spawn_node_with};

fn worker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/baileys-worker")
}

fn installed() -> bool {
    worker_dir().join("node_modules/@whiskeysockets/baileys/package.json").is_file()
}

/// Installs the worker's packages once per test run (`npm ci`, from the
/// lockfile); the outcome, for every test that asks.
fn install_once() -> bool {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INSTALLED.get_or_init(|| {
        installed()
            || std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(worker_dir())
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                && installed()
    })
}

/// Whether the worker can run here; panics when it must and cannot.
fn worker_available() -> bool {
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if node && install_once() {
        return true;
    }
    let why = if node { "`npm ci` in examples/baileys-worker failed" } else { "Node.js is not installed" };
    assert!(std::env::var_os("TREKKER_REQUIRE_BAILEYS").is_none(), "TREKKER_REQUIRE_BAILEYS is set, but: {why}");
    trekker_testkit::announce_skip(why, "did not run the reference Baileys worker");
    false
}

async fn node_with_worker(database_url: &str, auth: &Path) -> TestNode {
    let command = format!("node {}", worker_dir().join("index.js").display());
    let driver = ProcessDriver::new(&command, auth, Duration::from_secs(5)).unwrap();
    let mut settings = settings(database_url, "SERVER0", 5);
    settings.bot_state_sync_secs = 1;
    spawn_node_with(settings, fast_runtime(Some(Arc::new(driver)))).await
}

async fn bot_detail(node: &TestNode, id: &str) -> serde_json::Value {
    node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}"), None).await.body
}

/// `trekker-worker.json` as saved in the database for `id`.
async fn saved_worker_file(node: &TestNode, id: &str) -> Option<serde_json::Value> {
    let saved = node.state.store.load_session_state(&BotId::parse(id).unwrap(), 1).await.unwrap()?;
    let scratch = tempfile::tempdir().unwrap();
    let folder = scratch.path().join("restored");
    trekker_runtime::state::restore(&saved.archive, &folder, 64 << 20).unwrap();
    let text = std::fs::read_to_string(folder.join("trekker-worker.json")).ok()?;
    serde_json::from_str(&text).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_worker_keeps_its_folder_across_starts_and_reports_disconnected() {
    if !worker_available() {
        return;
    }
    let database = trekker_testkit::sqlite_database();
    let auth = tempfile::tempdir().unwrap();
    let node = node_with_worker(&database.url, auth.path()).await;
    let phone = creds::phone(69, 1);
    let created = node.register("Baileys", &phone, 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(node.approve(&id).await.status, 200);

    // No WhatsApp here: the worker says it is disconnected (the node shows
    // the reason), and keeps running.
    eventually(Duration::from_secs(60), "the worker reports disconnected", || async {
        let detail = bot_detail(&node, &id).await;
        detail["status"] == "loading" && detail["lastError"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;
    // What it wrote in its folder reached the database.
    eventually(Duration::from_secs(30), "the worker's file is saved", || async {
        saved_worker_file(&node, &id).await.is_some_and(|f| f["starts"] == 1)
    })
    .await;
    node.stop().await;

    // Started again: the worker finds its folder as it left it.
    let node = node_with_worker(&database.url, auth.path()).await;
    eventually(Duration::from_secs(60), "the second start counts on the first", || async {
        saved_worker_file(&node, &id).await.is_some_and(|f| f["starts"] == 2)
    })
    .await;
    node.stop().await;
    assert!(!auth.path().join(&id).exists(), "the folder is gone once the bot stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_worker_exits_at_end_of_input_and_on_sigterm() {
    if !worker_available() {
        return;
    }
    for ending in ["eof", "sigterm"] {
        let auth = tempfile::tempdir().unwrap();
        std::fs::write(auth.path().join("creds.json"), creds::creds_json(&creds::phone(69, 2), 1).to_string()).unwrap();
        let mut worker = tokio::process::Command::new("node")
            .arg(worker_dir().join("index.js"))
            .env("AUTH_DIR", auth.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Let it load and try to connect.
        eventually(Duration::from_secs(30), "the worker started", || async {
            auth.path().join("trekker-worker.json").is_file()
        })
        .await;
        match ending {
            "eof" => drop(worker.stdin.take()),
            _ => {
                let pid = nix::unistd::Pid::from_raw(worker.id().unwrap() as i32);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(15), worker.wait()).await;
        let status = status.unwrap_or_else(|_| panic!("the worker did not exit at {ending}")).unwrap();
        assert_eq!(status.code(), Some(0), "{ending}");
    }
}
