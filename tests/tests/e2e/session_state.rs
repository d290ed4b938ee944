//! A bot's session folder through real nodes (invariant 9), on both
//! backends, with a `process` bot that writes to its folder
//! (`fixtures/session-worker.sh`): it survives a crash, a node restart and
//! a move to another node; a new pairing starts clean; an oversized folder
//! or one holding a link is refused with the last good state kept; nothing
//! stays on disk once the bot stops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use trekker_node::Overrides;
use trekker_runtime::ProcessDriver;
use trekker_testkit::creds;

use crate::support::{TestNode, databases, eventually, fast_runtime, raw_sql_owned, settings, spawn_node_with};

const WORKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/session-worker.sh");

/// A node whose bots run `session-worker.sh`, saving their folders every
/// second, at most `max_mb` MiB.
async fn node(url: &str, name: &str, out: &Path, auth: &Path, max_mb: u64) -> TestNode {
    let command = format!("bash {WORKER} {}", out.display());
    let driver = ProcessDriver::new(&command, auth, Duration::from_secs(2)).unwrap();
    let mut settings = settings(url, name, 10);
    settings.bot_state_sync_secs = 1;
    settings.bot_state_max_mb = max_mb;
    let overrides: Overrides = fast_runtime(Some(Arc::new(driver)));
    spawn_node_with(settings, overrides).await
}

async fn register_approved(node: &TestNode, phone: &str) -> String {
    let created = node.register("Keeper", phone, 1, None).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    let id = created.body["bot"]["id"].as_str().unwrap().to_owned();
    assert_eq!(node.approve(&id).await.status, 200);
    id
}

fn log(out: &Path, phone: &str) -> String {
    std::fs::read_to_string(out.join(format!("log-{phone}"))).unwrap_or_default()
}

async fn wait_log(out: &Path, phone: &str, line: &str) {
    eventually(Duration::from_secs(20), line, || async { log(out, phone).contains(line) }).await;
}

async fn bot_detail(node: &TestNode, id: &str) -> Value {
    let answer = node.admin(reqwest::Method::GET, &format!("/api/admin/bots/{id}"), None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body
}

/// Waits until the saved state of `id` has `files` files.
async fn wait_saved(node: &TestNode, id: &str, files: i64) {
    eventually(Duration::from_secs(20), &format!("{files} files saved"), || async {
        bot_detail(node, id).await["sessionState"]["files"] == files
    })
    .await;
}

/// Nothing of any bot is left under `auth` (folders or half-restored ones).
fn assert_no_bot_folders(auth: &Path) {
    let left: Vec<PathBuf> = std::fs::read_dir(auth).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(left.is_empty(), "left on disk: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_survives_a_crash_a_restart_and_a_move_and_a_new_pairing_starts_clean() {
    for (url, _guard) in databases().await {
        let out = tempfile::tempdir().unwrap();
        let (auth_a, auth_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let phone = creds::phone(67, u32::from(url.starts_with("postgres")));
        std::fs::write(out.path().join(format!("mode-{phone}")), "crash-once").unwrap();
        let a = node(&url, "SERVER0", out.path(), auth_a.path(), 16).await;
        let b = node(&url, "SERVER1", out.path(), auth_b.path(), 16).await;
        let id = register_approved(&a, &phone).await;

        // It crashed once: the restart saw the folder the crash left.
        wait_log(out.path(), &phone, "counter=2 v1 server=SERVER0").await;
        // A node restart: stopped gracefully (saved), started again.
        a.stop().await;
        assert_no_bot_folders(auth_a.path());
        let a = node(&url, "SERVER0", out.path(), auth_a.path(), 16).await;
        wait_log(out.path(), &phone, "counter=3 v1 server=SERVER0").await;
        let detail = bot_detail(&a, &id).await;
        assert!(detail["sessionState"]["sizeBytes"].as_i64().unwrap() > 0, "{detail}");
        assert!(detail["sessionState"]["syncedAt"].is_string(), "{detail}");
        assert!(detail["deviceState"].is_null(), "a process bot keeps a folder, not keyed state: {detail}");

        // A move to SERVER1 carries the folder (every key file with it).
        for sql in [
            format!("UPDATE bot_instances SET server_name = 'SERVER1' WHERE id = '{id}'"),
            format!("UPDATE god_register SET tenancy_name = 'SERVER1' WHERE bot_id = '{id}'"),
        ] {
            raw_sql_owned(&url, sql).await;
        }
        wait_log(out.path(), &phone, "counter=4 v1 server=SERVER1").await;
        let restored = auth_b.path().join(&id).join("keys");
        let keys: Vec<String> =
            std::fs::read_dir(&restored).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert_no_bot_folders(auth_a.path());

        // New credentials from a new pairing: a new session, from scratch.
        let updated = b.register("Keeper", &phone, 2, None).await;
        assert_eq!(updated.status, 200, "{:?}", updated.body);
        wait_log(out.path(), &phone, "counter=1 v2 server=SERVER1").await;
        a.stop().await;
        b.stop().await;
        assert_no_bot_folders(auth_b.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_oversized_or_linked_folder_is_refused_and_the_last_good_state_is_kept() {
    for (url, _guard) in databases().await {
        let out = tempfile::tempdir().unwrap();
        let auth = tempfile::tempdir().unwrap();
        let phone = creds::phone(68, u32::from(url.starts_with("postgres")));
        let node_a = node(&url, "SERVER0", out.path(), auth.path(), 1).await;
        let id = register_approved(&node_a, &phone).await;
        wait_log(out.path(), &phone, "counter=1 v1").await;
        // counter and keys/app-state-1 (creds.json is the third).
        wait_saved(&node_a, &id, 3).await;
        let folder = auth.path().join(&id);

        // The bot fills its folder past BOT_STATE_MAX_MB (1 MiB here).
        std::fs::write(folder.join("huge"), vec![7u8; 1_200_000]).unwrap();
        eventually(Duration::from_secs(20), "the refusal is on the bot", || async {
            let detail = bot_detail(&node_a, &id).await;
            detail["lastError"]
                .as_str()
                .is_some_and(|e| e.contains("session state not saved") && e.contains("over the limit"))
        })
        .await;
        std::fs::remove_file(folder.join("huge")).unwrap();
        // A link out of the folder is refused as well.
        std::os::unix::fs::symlink("/etc/passwd", folder.join("passwd")).unwrap();
        eventually(Duration::from_secs(20), "the link is refused", || async {
            let detail = bot_detail(&node_a, &id).await;
            detail["lastError"].as_str().is_some_and(|e| e.contains("`passwd` is not a regular file"))
        })
        .await;
        let activities = node_a.admin(reqwest::Method::GET, &format!("/api/admin/activities?bot={id}"), None).await;
        let refusals = activities.body["activities"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "session_state_refused")
            .count();
        assert_eq!(refusals, 2, "{:?}", activities.body);
        // What was saved is still the last good folder.
        assert_eq!(bot_detail(&node_a, &id).await["sessionState"]["files"], 3);

        // On the next start the bot gets the last good folder back: no huge
        // file, no link, its counter where the good state left it.
        node_a.stop().await;
        assert_no_bot_folders(auth.path());
        let node_a = node(&url, "SERVER0", out.path(), auth.path(), 1).await;
        wait_log(out.path(), &phone, "counter=2 v1").await;
        assert!(!folder.join("passwd").exists() && !folder.join("huge").exists());
        node_a.stop().await;
    }
}
