//! The real `trekker-node` binary: starts on the SQLite default with no
//! set-up, logs `listening on <addr>`, serves, and exits 0 on SIGTERM after
//! a graceful stop; a bad setting stops it at start with the setting named.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{BINARY, http, http_get, register_approved, start_node};

#[test]
fn serves_on_sqlite_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BINARY)
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BIND_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut addr = None;
    let mut log = Vec::new();
    while addr.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                addr = rest.split_whitespace().next().map(str::to_owned);
            }
            log.push(line);
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no `listening on` line: {log:#?}"));
    let health = http_get(&addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(dir.path().join("trekker.db").exists(), "the SQLite default is created");
    assert!(dir.path().join("trekker.db.key").exists(), "its key file too");
    // Database, its WAL files and the key: readable by the node's user only.
    {
        use std::os::unix::fs::PermissionsExt;
        for name in ["trekker.db", "trekker.db-wal", "trekker.db-shm", "trekker.db.key"] {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is {mode:o}");
        }
    }

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 15 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("all bots stopped")), "{rest:#?}");
    // No log line carries a secret: the generated key is not printed.
    let key = std::fs::read_to_string(dir.path().join("trekker.db.key")).unwrap();
    assert!(!log.iter().chain(&rest).any(|l| l.contains(key.trim())));
}

#[test]
fn a_bad_setting_stops_the_start_and_names_it() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("DATABASE_URL", "postgres://db/trekker")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("CREDENTIALS_KEY"), "{text}");
}

/// A start that fails on the database says why, cause by cause, not just
/// "database error".
#[test]
fn a_failed_start_prints_the_whole_cause() {
    let output = Command::new(BINARY)
        .env_clear()
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/trekker")
        .env("CREDENTIALS_KEY", "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("cannot start: database"), "{text}");
    assert!(text.to_lowercase().contains("connection refused"), "the root cause is printed: {text}");
}

/// Runs the binary in `dir` with a clean environment and `args`.
fn run_in(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BINARY)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap()
}

/// Every file in `dir` with its length and modification time. SQLite's
/// `-shm` file is the WAL's shared-memory index, which every reader maps
/// and updates: its time is left out (its length still counts).
fn listing(dir: &std::path::Path) -> Vec<(String, u64, Option<std::time::SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let modified = (!name.ends_with("-shm")).then(|| meta.modified().unwrap());
            (name, meta.len(), modified)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn check_reads_the_database_but_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing there yet: check fails and creates neither database nor key file.
    let fresh = run_in(dir.path(), &["check"]);
    assert!(!fresh.status.success(), "check of a missing database must fail");
    assert!(listing(dir.path()).is_empty(), "check wrote {:?}", listing(dir.path()));

    assert!(run_in(dir.path(), &["migrate"]).status.success());
    let before = listing(dir.path());
    assert!(before.iter().any(|(name, ..)| name == "trekker.db"), "{before:?}");
    std::thread::sleep(Duration::from_millis(20)); // a write would show in the modification times
    let checked = run_in(dir.path(), &["check"]);
    let text = String::from_utf8_lossy(&checked.stdout).to_string() + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{text}");
    assert!(text.contains("pending_migrations=0"), "{text}");
    // SQLite may create its empty WAL companions to read a WAL database
    // (when `migrate` closed cleanly and removed them); data, no.
    let after: Vec<_> = listing(dir.path())
        .into_iter()
        .filter(|(name, len, _)| {
            let companion = name.ends_with("-wal") || name.ends_with("-shm");
            let new = !before.iter().any(|(was, ..)| was == name);
            if companion && new {
                assert!(name.ends_with("-shm") || *len == 0, "check wrote {len} bytes of WAL");
            }
            !(companion && new)
        })
        .collect();
    assert_eq!(after, before, "check changed the folder");

    // Without its key file, check says so instead of generating a new one.
    std::fs::remove_file(dir.path().join("trekker.db.key")).unwrap();
    let keyless = run_in(dir.path(), &["check"]);
    let text = String::from_utf8_lossy(&keyless.stdout).to_string() + &String::from_utf8_lossy(&keyless.stderr);
    assert!(!keyless.status.success(), "{text}");
    assert!(text.contains("key file"), "{text}");
    assert!(!dir.path().join("trekker.db.key").exists());
}

#[test]
fn check_help_says_it_writes_nothing() {
    let output = Command::new(BINARY).args(["help", "check"]).output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("Writes nothing"));
}

/// A `process` bot exits when its node is killed outright (its stdin pipe
/// reaches end-of-file), so no orphan keeps running it.
#[test]
fn process_bots_exit_when_their_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/bot-worker.sh");
    let (mut node, addr) = start_node(
        dir.path(),
        &[
            ("BOT_DRIVER", "process".into()),
            // The worker logs into `out`, outside any sandbox's view
            // (sandboxed bots: tests/sandbox.rs).
            ("BOT_SANDBOX", "off".into()),
            ("BOT_COMMAND", format!("bash {worker} {}", out.display())),
            ("BOT_AUTH_DIR", dir.path().join("bots").display().to_string()),
            ("ADMIN_TOKEN", "admin-token".into()),
            ("RATE_LIMIT_PER_MIN", "0".into()),
        ],
    );
    let phone = trekker_testkit::creds::phone(70, 1);
    let id = register_approved(&addr, &phone);

    let log = out.join(format!("log-{phone}"));
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !read_log().contains("pid=") {
        assert!(Instant::now() < deadline, "the bot never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let bot_pid: i32 = read_log().split("pid=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let alive = |pid: i32| kill(Pid::from_raw(pid), None).is_ok();
    // While its node lives, the bot stays up (a worker whose stdin were
    // already at end-of-file would be gone within 0.1 s).
    let watch_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < watch_until {
        assert!(alive(bot_pid) && !read_log().contains("node gone"), "the bot died under a live node: {}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    kill(Pid::from_raw(node.id() as i32), Signal::SIGKILL).unwrap();
    node.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !read_log().contains(&format!("node gone {id}")) || alive(bot_pid) {
        assert!(Instant::now() < deadline, "the bot outlived its node: {}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A bot's session survives a SIGKILL of its node up to the last sync: the
/// node, started again, restores the folder the bot had written.
#[test]
fn a_session_survives_a_sigkill_of_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let worker = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/session-worker.sh");
    let envs = [
        ("BOT_DRIVER", "process".to_owned()),
        ("BOT_SANDBOX", "off".to_owned()),
        ("BOT_COMMAND", format!("bash {worker} {}", out.display())),
        ("BOT_AUTH_DIR", dir.path().join("bots").display().to_string()),
        ("BOT_STATE_SYNC_SECS", "1".into()),
        ("ADMIN_TOKEN", "admin-token".into()),
        ("RATE_LIMIT_PER_MIN", "0".into()),
    ];
    let (mut node, addr) = start_node(dir.path(), &envs);
    let phone = trekker_testkit::creds::phone(71, 1);
    let id = register_approved(&addr, &phone);
    let admin = "Authorization: Bearer admin-token\r\n";

    let read_log = || std::fs::read_to_string(out.join(format!("log-{phone}"))).unwrap_or_default();
    let wait = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {}", read_log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("the first start", &|| read_log().contains("counter=1"));
    // Saved at least once (the node syncs every second).
    wait("a saved session", &|| {
        http(&addr, "GET", &format!("/api/admin/bots/{id}"), admin, "").contains(r#""files":3"#)
    });
    kill(Pid::from_raw(node.id() as i32), Signal::SIGKILL).unwrap();
    node.wait().unwrap();

    let (mut node, _) = start_node(dir.path(), &envs);
    wait("a start from the saved session", &|| read_log().contains("counter=2"));
    kill(Pid::from_raw(node.id() as i32), Signal::SIGTERM).unwrap();
    node.wait().unwrap();
}
