//! A throwaway PostgreSQL server for tests.
//!
//! The first test of a process that asks for a database starts a server:
//! `initdb` + `pg_ctl` in a temporary folder, on a free loopback port, as
//! the `postgres` user when running as root (PostgreSQL refuses root). The
//! schema is migrated once into a template database; each test gets a fresh
//! database cloned from it. A watchdog process stops the server and removes
//! its folder when the test process exits, however it exits.
//!
//! `DATABASE_URL=postgres://...` points the tests at an existing server
//! instead. The PostgreSQL tests run by default and FAIL when no server can
//! be started; skipping them takes `TREKKER_SKIP_POSTGRES=1`, and then
//! every skipped test says so on the run's own stderr (not in the output
//! libtest captures), so a green run cannot hide them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection as _;
use trekker_store::{Postgres, SqlStore};

/// A fresh, migrated database for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub url: String,
}

struct Server {
    /// URL of the maintenance database, for CREATE DATABASE.
    admin_url: String,
    /// URL without a database name: `postgres://user@host:port`.
    base_url: String,
    template: String,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// A fresh database cloned from the migrated template, or `None` when the
/// PostgreSQL tests are skipped (`TREKKER_SKIP_POSTGRES=1`, announced).
pub async fn database() -> Option<TestDatabase> {
    if postgres_skipped() {
        announce_skip();
        return None;
    }
    let server = match SERVER.get_or_init(start_or_find_server) {
        Ok(server) => server,
        Err(message) => panic!(
            "PostgreSQL test server: {message}. Install PostgreSQL, set DATABASE_URL=postgres://..., \
             or skip these tests on purpose with TREKKER_SKIP_POSTGRES=1."
        ),
    };
    let name = format!("trekker_t{}_{}", std::process::id(), NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
    let mut admin = sqlx::PgConnection::connect(&server.admin_url).await.expect("connect to the test server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {}", server.template)))
        .execute(&mut admin)
        .await
        .expect("clone the template database");
    admin.close().await.ok();
    Some(TestDatabase { url: format!("{}/{name}", server.base_url) })
}

/// The opt-out: whether the PostgreSQL tests are skipped on purpose.
pub fn postgres_skipped() -> bool {
    std::env::var("TREKKER_SKIP_POSTGRES").is_ok_and(|v| v == "1")
}

fn announce_skip() {
    crate::announce_skip("TREKKER_SKIP_POSTGRES=1", "did not run against PostgreSQL");
}

fn start_or_find_server() -> Result<Server, String> {
    let (base_url, admin_url) = match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let base = url.rsplit_once('/').map(|(base, _)| base.to_owned()).unwrap_or(url.clone());
            (base, url)
        }
        _ => {
            let base = start_server()?;
            (base.clone(), format!("{base}/postgres"))
        }
    };
    let template = format!("trekker_template_{}", std::process::id());
    let server = Server { admin_url, base_url, template };
    migrate_template(&server)?;
    Ok(server)
}

fn migrate_template(server: &Server) -> Result<(), String> {
    let admin_url = server.admin_url.clone();
    let template = server.template.clone();
    let template_url = format!("{}/{template}", server.base_url);
    // Runs on its own thread and runtime: the caller may be inside a test's
    // runtime, where blocking on another one is not allowed.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await.map_err(|e| format!("connect: {e}"))?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {template}")))
                .execute(&mut admin)
                .await
                .map_err(|e| format!("create template: {e}"))?;
            admin.close().await.ok();
            let store = SqlStore::<Postgres>::connect(&template_url, crate::test_cipher(), 1)
                .await
                .map_err(|e| format!("migrate template: {e:?}"))?;
            // No connection may stay on a template while it is cloned.
            store.pool().close().await;
            Ok(())
        })
    })
    .join()
    .map_err(|_| "template migration panicked".to_owned())?
}

/// A PostgreSQL server of one test's own (a test that restarts or stops
/// its server must not take the shared one down under the others).
#[derive(Debug)]
pub struct DedicatedServer {
    /// `postgres://postgres@127.0.0.1:<port>`, without a database name.
    pub base_url: String,
    bin_dir: PathBuf,
    data: PathBuf,
    as_root: bool,
}

impl DedicatedServer {
    /// Starts one; `None` when the PostgreSQL tests are skipped.
    pub fn start() -> Option<Self> {
        if postgres_skipped() {
            announce_skip();
            return None;
        }
        // Its tests crash it: a commit it acknowledges must be written
        // out first (synchronous_commit), or an immediate stop loses it.
        let (base_url, bin_dir, data) = start_server_at(true).expect("a dedicated PostgreSQL server");
        Some(Self { base_url, bin_dir, data, as_root: is_root() })
    }

    /// Creates an empty database `name` on it; returns its URL.
    pub async fn empty_database(&self, name: &str) -> String {
        let mut admin =
            sqlx::PgConnection::connect(&format!("{}/postgres", self.base_url)).await.expect("connect to the server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create the database");
        admin.close().await.ok();
        format!("{}/{name}", self.base_url)
    }

    /// Creates database `name` on it and applies the schema; returns its URL.
    pub async fn migrated_database(&self, name: &str) -> String {
        let url = self.empty_database(name).await;
        let store = SqlStore::<Postgres>::connect(&url, crate::test_cipher(), 1).await.expect("migrate");
        store.pool().close().await;
        url
    }

    /// Restarts the server the way a crash does (`-m immediate`: no
    /// checkpoint, every client cut off), waiting until it accepts again.
    pub fn crash_restart(&self) {
        // Its output goes to the log: a pipe would be held by the server.
        let log = self.data.with_file_name("server.log");
        run(pg_command(self.as_root, &self.bin_dir, "pg_ctl")
            .arg("-w")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(log)
            .args(["-m", "immediate", "restart"]))
        .expect("pg_ctl restart");
    }
}

/// Starts a server and returns its base URL.
fn start_server() -> Result<String, String> {
    start_server_at(false).map(|(base_url, ..)| base_url)
}

/// Starts a server; returns its base URL, binaries and data folder. Every
/// server skips fsync (a test machine's crash is no test's concern); only
/// `durable_commits` ones also write each commit's WAL before answering,
/// which a server that is killed mid-test needs (`-m immediate` drops the
/// WAL buffers, and with them what `synchronous_commit=off` acknowledged).
fn start_server_at(durable_commits: bool) -> Result<(String, PathBuf, PathBuf), String> {
    let bin_dir = find_postgres_bin().ok_or("PostgreSQL binaries (initdb, pg_ctl) not found")?;
    let as_root = is_root();
    let dir = tempfile::Builder::new().prefix("trekker-pg-").tempdir().map_err(|e| format!("temp dir: {e}"))?.keep();
    if as_root {
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir))?;
    }
    let data = dir.join("data");
    run(pg_command(as_root, &bin_dir, "initdb").arg("-D").arg(&data).args([
        "-A",
        "trust",
        "-U",
        "postgres",
        "--no-sync",
        "-E",
        "UTF8",
        "--no-instructions",
    ]))?;
    let port = free_port()?;
    let synchronous_commit = if durable_commits { "on" } else { "off" };
    let mut options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit={synchronous_commit} \
         -c full_page_writes=off -c max_connections=400",
        dir.display()
    );
    // The benchmarks read each statement's database time from it
    // (docs/benchmarks.md); a server without the contrib module runs without.
    if has_pg_stat_statements(&bin_dir) {
        options.push_str(" -c shared_preload_libraries=pg_stat_statements");
    }
    run(pg_command(as_root, &bin_dir, "pg_ctl")
        .arg("-w")
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("server.log"))
        .arg("-o")
        .arg(options)
        .arg("start"))?;
    spawn_watchdog(as_root, &bin_dir, &dir, &data)?;
    Ok((format!("postgres://postgres@127.0.0.1:{port}"), bin_dir, data))
}

/// Whether the server's library folder has `pg_stat_statements`.
fn has_pg_stat_statements(bin_dir: &Path) -> bool {
    // `initdb` may be a link on PATH into the versioned folder.
    let Ok(initdb) = std::fs::canonicalize(bin_dir.join("initdb")) else { return false };
    initdb.parent().and_then(Path::parent).is_some_and(|dir| dir.join("lib").join("pg_stat_statements.so").is_file())
}

/// Stops the server and removes its folder once this process is gone.
fn spawn_watchdog(as_root: bool, bin_dir: &Path, dir: &Path, data: &Path) -> Result<(), String> {
    let pg_ctl = bin_dir.join("pg_ctl");
    let stop = if as_root {
        format!("runuser -u postgres -- '{}' stop -D '{}' -m immediate", pg_ctl.display(), data.display())
    } else {
        format!("'{}' stop -D '{}' -m immediate", pg_ctl.display(), data.display())
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|_| ())
        .map_err(|e| format!("watchdog: {e}"))
}

fn pg_command(as_root: bool, bin_dir: &Path, program: &str) -> Command {
    let path = bin_dir.join(program);
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A PostgreSQL client program (`pgbench`, `psql`) from the folder whose
/// server the harness starts, when there is one.
pub fn postgres_tool(name: &str) -> Option<PathBuf> {
    let preferred = find_postgres_bin().into_iter();
    preferred.chain(bin_dirs()).map(|dir| dir.join(name)).find(|path| path.is_file())
}

fn find_postgres_bin() -> Option<PathBuf> {
    bin_dirs().find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
}

/// Where PostgreSQL programs may be: `PATH`, then Debian's versioned
/// folders, newest first.
fn bin_dirs() -> impl Iterator<Item = PathBuf> {
    let mut candidates: Vec<PathBuf> =
        std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates.into_iter()
}

pub(crate) fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

pub(crate) fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("free port: {e}"))
}
