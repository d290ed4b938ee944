//! A throwaway PgBouncer (Debian's `pgbouncer`) in front of the test
//! PostgreSQL server, in the mode an operator's managed database has:
//! `transaction` (Neon's and Supabase's pooled endpoints) or `session`,
//! with a pool as small as a test wants.
//!
//! Started per test on a free loopback port, as the `postgres` user when
//! running as root (PgBouncer refuses root); stopped when the handle is
//! dropped, and by a watchdog when the test process dies however it dies.
//! Without the program these tests say so loudly and pass, unless
//! `TREKKER_REQUIRE_PGBOUNCER` is set (CI sets it): then they fail.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::TestDatabase;

/// Where Debian puts the program.
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer for one database.
pub struct TestPgBouncer {
    /// The database through the pooler (same name, same user).
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for TestPgBouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPgBouncer").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Drop for TestPgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pool modes of PgBouncer a test can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
}

/// Starts PgBouncer in `mode` with `pool_size` server connections in front
/// of `database`; `None` (said loudly) when the program is not installed
/// and `TREKKER_REQUIRE_PGBOUNCER` is not set.
pub fn start(database: &TestDatabase, mode: PoolMode, pool_size: u32) -> Option<TestPgBouncer> {
    if !PathBuf::from(PGBOUNCER).is_file() {
        assert!(
            std::env::var_os("TREKKER_REQUIRE_PGBOUNCER").is_none(),
            "TREKKER_REQUIRE_PGBOUNCER is set but {PGBOUNCER} is missing (apt-get install pgbouncer)"
        );
        crate::announce_skip(&format!("no {PGBOUNCER}"), "did not run through PgBouncer");
        return None;
    }
    let (host_port, name) = database.url.trim_start_matches("postgres://").split_once('/').expect("a database URL");
    let (_, host_port) = host_port.split_once('@').unwrap_or(("", host_port));
    let (host, server_port) = host_port.split_once(':').expect("host:port");
    let dir = tempfile::Builder::new().prefix("trekker-pgbouncer-").tempdir().expect("temp dir");
    let as_root = crate::postgres::is_root();
    let port = crate::postgres::free_port().expect("a free port");
    let mode_name = match mode {
        PoolMode::Session => "session",
        PoolMode::Transaction => "transaction",
    };
    let config = format!(
        "[databases]\n{name} = host={host} port={server_port} user=postgres dbname={name}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = any\n\
         pool_mode = {mode_name}\ndefault_pool_size = {pool_size}\nmin_pool_size = 0\nreserve_pool_size = 0\n\
         max_client_conn = 2000\nmax_db_connections = {pool_size}\n\
         ignore_startup_parameters = extra_float_digits\nserver_reset_query = DISCARD ALL\n\
         logfile = {log}\npidfile = {pid}\n",
        log = dir.path().join("pgbouncer.log").display(),
        pid = dir.path().join("pgbouncer.pid").display(),
    );
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(&ini, config).expect("write pgbouncer.ini");
    if as_root {
        let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
    }
    let mut command = Command::new(PGBOUNCER);
    if as_root {
        command.args(["-u", "postgres"]);
    }
    let child = command
        .arg(&ini)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbouncer starts");
    // Killed with the test process, however it ends.
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill {child} 2>/dev/null",
        me = std::process::id(),
        child = child.id()
    );
    let _ = Command::new("sh").arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "pgbouncer did not listen: {}", log_of(dir.path()));
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(TestPgBouncer { url: format!("postgres://postgres@127.0.0.1:{port}/{name}"), child, _dir: dir })
}

fn log_of(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
}
