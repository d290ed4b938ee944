//! A hostile bot under the `process` driver, on a node run as an
//! unprivileged user the way docs/security.md deploys it (its own user,
//! subordinate ids, a delegated cgroup): every probe of the threat model is
//! refused or contained, the bystander bot on the same node keeps being
//! restarted within seconds, and the node answers `/healthz` throughout
//! (DESIGN.md invariant 10).
//!
//! The bot is `tests/fixtures/hostile-bot.sh`; the test orders it around by
//! writing `$AUTH_DIR/order` as root. Setting the machine up needs root
//! (a user, /etc/subuid, cgroups) and bubblewrap: without them the suite
//! says SKIPPED, unless TREKKER_REQUIRE_SANDBOX is set (CI), where it fails.

#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

mod support;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{BINARY, http, json_body, register_approved, spawn_listening};

/// The node's user, created for the suite.
const USER: &str = "trekker-e2e";
/// In the node's environment; its cluster secret comes from a file (the
/// `*_FILE` way) and its credentials key from the key file beside SQLite.
const ADMIN_TOKEN: &str = "admin-token";
const CLUSTER_SECRET: &str = "cluster-secret-cluster-secret-0123456789";
const ADMIN: &str = "Authorization: Bearer admin-token\r\n";
const HOSTILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/hostile-bot.sh");

/// The machine made ready for an unprivileged node: its user, ids and a
/// delegated cgroup; removed again when dropped.
struct Machine {
    uid: u32,
    gid: u32,
    ids: std::ops::Range<u32>,
    cgroups: Vec<PathBuf>,
    work: tempfile::TempDir,
}

fn skip(why: &str) -> Option<Machine> {
    assert!(std::env::var_os("TREKKER_REQUIRE_SANDBOX").is_none(), "the sandbox suite cannot run: {why}");
    trekker_testkit::announce_skip(
        &format!("no sandbox here: {why}"),
        "did not run; set TREKKER_REQUIRE_SANDBOX=1 to make this fail",
    );
    None
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program).args(args).status().is_ok_and(|s| s.success())
}

impl Machine {
    fn prepare(name: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            return skip("the suite sets up a user, ids and cgroups as root");
        }
        for tool in ["bwrap", "setpriv", "newuidmap", "unshare"] {
            if !run("sh", &["-c", &format!("command -v {tool} >/dev/null")]) {
                return skip(&format!("`{tool}` is not installed (apt-get install bubblewrap uidmap)"));
            }
        }
        if nix::unistd::User::from_name(USER).unwrap().is_none() {
            assert!(run("useradd", &["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER]));
        }
        let user = nix::unistd::User::from_name(USER).unwrap().unwrap();
        let start = 400_000;
        for file in ["/etc/subuid", "/etc/subgid"] {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            if !text.lines().any(|l| l.starts_with(&format!("{USER}:"))) {
                let mut text = text;
                text.push_str(&format!("{USER}:{start}:65536\n"));
                std::fs::write(file, text).unwrap();
            }
        }
        let range = std::fs::read_to_string("/etc/subuid").unwrap();
        let first: u32 = range
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{USER}:")))
            .and_then(|rest| rest.split(':').next()?.parse().ok())
            .unwrap();
        // The node's delegated cgroup: one per controller (cgroup v1 here),
        // owned by its user, as systemd's Delegate=yes leaves it.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mut cgroups = Vec::new();
        for controller in ["memory", "pids", "cpu", "cpuacct"] {
            let Some(path) = own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers.split(',').any(|c| c == controller).then(|| path.to_owned())
            }) else {
                return skip(&format!("no cgroup v1 `{controller}` hierarchy"));
            };
            let dir = PathBuf::from(format!(
                "/sys/fs/cgroup/{controller}{}/{name}-{}",
                path.trim_end_matches('/'),
                std::process::id()
            ));
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
            }
            assert!(run("chown", &["-R", USER, dir.to_str().unwrap()]));
            cgroups.push(dir);
        }
        cgroups.dedup();
        let work = tempfile::tempdir().unwrap();
        assert!(run("chown", &[USER, work.path().to_str().unwrap()]));
        Some(Self { uid: user.uid.as_raw(), gid: user.gid.as_raw(), ids: first..first + 65_536, cgroups, work })
    }

    /// Starts `trekker-node` as the node's user inside its cgroup.
    fn start_node(&self, envs: &[(&str, String)]) -> (Child, String, Arc<Mutex<Vec<String>>>) {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(r#"while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; exec "$@""#).arg("join");
        command.args(self.cgroups.iter().map(|d| d.join("cgroup.procs")));
        command
            .arg("--")
            .arg("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(BINARY)
            .current_dir(self.work.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("RUST_LOG", "info");
        let secrets = self.work.path().join("secrets");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("cluster-secret"), format!("{CLUSTER_SECRET}\n")).unwrap();
        assert!(run("chown", &["-R", USER, secrets.to_str().unwrap()]));
        assert!(run("chmod", &["-R", "go-rwx", secrets.to_str().unwrap()]));
        command.env("ADMIN_TOKEN", ADMIN_TOKEN).env("CLUSTER_SECRET_FILE", secrets.join("cluster-secret"));
        for (key, value) in envs {
            command.env(key, value);
        }
        spawn_listening(command)
    }

    /// Every process on the machine whose uid is one of the bots' ids.
    fn bot_processes(&self) -> Vec<(i32, u32)> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                let uid = std::fs::metadata(format!("/proc/{pid}")).ok()?.uid();
                self.ids.contains(&uid).then_some((pid, uid))
            })
            .collect()
    }
}

impl Drop for Machine {
    /// Removes the node's cgroups, emptying what a failed run left in them.
    fn drop(&mut self) {
        for _ in 0..100 {
            for dir in &self.cgroups {
                let children = std::fs::read_dir(dir).into_iter().flatten().flatten().filter(|c| c.path().is_dir());
                for child in children {
                    for pid in read(&child.path().join("cgroup.procs")).lines().filter_map(|p| p.parse().ok()) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                    let _ = std::fs::remove_dir(child.path());
                }
                let _ = std::fs::remove_dir(dir);
            }
            if self.cgroups.iter().all(|d| !d.exists()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A node killed when the test ends early (a failed assertion), so that it
/// and its bots never outlive the test.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `/healthz` every 100 ms, counting answers that were not 200.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    checks: Arc<AtomicUsize>,
}

impl HealthWatch {
    fn start(addr: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (failures, checks) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, f, c, addr) = (Arc::clone(&stop), Arc::clone(&failures), Arc::clone(&checks), addr.to_owned());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let ok =
                    std::panic::catch_unwind(|| http(&addr, "GET", "/healthz", "", "").starts_with("HTTP/1.1 200"));
                if !ok.unwrap_or(false) {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                c.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, failures, checks }
    }

    fn failures(&self) -> (usize, usize) {
        (self.failures.load(Ordering::Relaxed), self.checks.load(Ordering::Relaxed))
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn wait(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// The node's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: 0 kB");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// One bot of the node, seen from the machine (root).
struct Bot<'a> {
    id: String,
    addr: &'a str,
    dir: PathBuf,
}

impl Bot<'_> {
    fn starts(&self) -> usize {
        read(&self.dir.join("starts")).lines().count()
    }

    fn uid(&self) -> u32 {
        std::fs::metadata(&self.dir).unwrap().uid()
    }

    /// Orders an action and waits until the bot says it is done.
    fn order(&self, order: &str) {
        let done = read(&self.dir.join("done")).lines().count();
        std::fs::write(self.dir.join("order"), format!("{order}\n")).unwrap();
        let action = order.split_whitespace().next().unwrap().to_owned();
        wait(&format!("`{action}` done"), Duration::from_secs(60), || {
            read(&self.dir.join("done")).lines().skip(done).any(|l| l == format!("{action} done"))
        });
    }

    /// Orders an action after which the bot does not answer (it is stopped
    /// or crashes): waits for its next start instead.
    fn order_and_await_restart(&self, order: &str) {
        // The order may leave a folder that is not saved: let the last
        // start reach the saved state first (synced every second).
        std::thread::sleep(Duration::from_millis(2500));
        let starts = self.starts();
        std::fs::write(self.dir.join("order"), format!("{order}\n")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.starts() <= starts {
            assert!(Instant::now() < deadline, "no restart after `{order}`: {}", self.detail());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn detail(&self) -> serde_json::Value {
        json_body(&http(self.addr, "GET", &format!("/api/admin/bots/{}", self.id), ADMIN, ""))
    }

    fn last_error(&self) -> String {
        self.detail()["lastError"].as_str().unwrap_or_default().to_owned()
    }

    /// Waits until the bot's `lastError` holds `needle`.
    fn wait_error(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.last_error().contains(needle) {
            assert!(Instant::now() < deadline, "lastError never held {needle:?}: {}", self.detail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn a_hostile_bot_is_contained_and_its_neighbour_runs_on() {
    let Some(machine) = Machine::prepare("trekker-e2e-hostile") else { return };
    let work = machine.work.path().to_path_buf();
    let bots = work.join("bots");
    let envs = [
        ("BOT_DRIVER", "process".to_owned()),
        ("BOT_COMMAND", format!("/bin/bash {HOSTILE}")),
        ("BOT_AUTH_DIR", bots.display().to_string()),
        ("BOT_MEMORY_MB", "128".into()),
        ("BOT_PIDS_MAX", "64".into()),
        ("BOT_DISK_MB", "32".into()),
        ("BOT_STATE_SYNC_SECS", "1".into()),
        ("BOT_STOP_GRACE_SECS", "2".into()),
        ("RATE_LIMIT_PER_MIN", "0".into()),
    ];
    let (node, addr, output) = machine.start_node(&envs);
    let mut node = NodeProcess(node);
    let node_pid = node.0.id();
    let health = HealthWatch::start(&addr);
    let bot = |phone: &str| {
        let id = register_approved(&addr, phone);
        let dir = bots.join(&id);
        Bot { id, addr: &addr, dir }
    };
    let (hostile, bystander) = (bot(&trekker_testkit::creds::phone(72, 1)), bot(&trekker_testkit::creds::phone(72, 2)));
    let started = || hostile.starts() == 1 && bystander.starts() == 1;
    if !started() {
        std::thread::sleep(Duration::from_secs(15));
    }
    assert!(started(), "the bots did not start: {:#?}", output.lock().unwrap());

    // Each bot runs as an id of its own from the node's range.
    let (hostile_uid, bystander_uid) = (hostile.uid(), bystander.uid());
    assert_ne!(hostile_uid, bystander_uid);
    for uid in [hostile_uid, bystander_uid] {
        assert!(machine.ids.contains(&uid) && uid != machine.uid, "bot uid {uid}");
    }
    let key = work.join("trekker.db.key");
    let bystander_pid = machine.bot_processes().into_iter().find(|(_, uid)| *uid == bystander_uid).unwrap().0;

    // Secrets, files, memory and signals of the node and of the other bot.
    hostile.order(&format!(
        "probe {} {} {} {} {node_pid} {bystander_pid} {}",
        key.display(),
        work.join("trekker.db").display(),
        work.display(),
        bystander.dir.display(),
        work.join("secrets/cluster-secret").display(),
    ));
    let env = read(&hostile.dir.join("out-env"));
    let names: HashSet<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    let allowed = ["BOT_ID", "PHONE_NUMBER", "AUTH_DIR", "SERVER_NAME", "CREDENTIALS_VERSION", "PATH", "HOME", "PWD"];
    // The send governor's figures (docs/bot-process-contract.md): public, and the same for every bot.
    let governor =
        ["BOT_SENDS_PER_MIN", "BOT_SEND_BURST", "BOT_NEW_CONTACTS_PER_DAY", "BOT_WARMUP_DAYS", "BOT_PAIRED_AT"];
    let shell = ["SHLVL", "_", "OLDPWD"];
    assert!(
        names.iter().all(|n| allowed.contains(n) || shell.contains(n) || governor.contains(n)),
        "the bot's environment: {names:?}"
    );
    let probe = read(&hostile.dir.join("out-probe"));
    let result = |name: &str| probe.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or("").to_owned();
    for refused in [
        "proc-node-environ",
        "proc-node-mem",
        "proc-any-environ",
        "key-file",
        "secret-file",
        "database",
        "other-bot-read",
        "other-bot-write",
        "system-write",
        "etc-write",
        "signal-node",
        "signal-other",
        "sysrq",
        "cgroup-escape",
    ] {
        assert!(!result(refused).contains(" rc=0 "), "{refused} succeeded: {}", result(refused));
    }
    // Its folder exists in the view only as the empty way to AUTH_DIR.
    assert!(!result("node-folder").contains("trekker.db"), "{}", result("node-folder"));
    // Inside the node's user namespace its range starts at 1 (0 is the node).
    let inside = hostile_uid - machine.ids.start + 1;
    assert!(result("id").contains(&format!("rc=0 {inside}")), "{}", result("id"));
    assert!(result("new-privileges").contains("NoNewPrivs:\t1"), "{}", result("new-privileges"));
    let visible: usize = result("proc-list").rsplit(' ').find_map(|w| w.parse().ok()).unwrap_or(99);
    assert!(visible < 10, "the bot sees {visible} processes: only its own are there");
    let key_text = read(&key);
    assert!(key_text.trim().len() >= 40, "the node made its key file");
    for secret in [ADMIN_TOKEN, CLUSTER_SECRET, key_text.trim()] {
        let seen: Vec<_> =
            std::fs::read_dir(&hostile.dir).unwrap().flatten().filter(|f| read(&f.path()).contains(secret)).collect();
        assert!(
            seen.is_empty(),
            "a secret reached the bot's folder: {:?}",
            seen.iter().map(|f| f.path()).collect::<Vec<_>>()
        );
    }
    assert!(!bystander.dir.join("poison").exists());
    let state = read(Path::new(&format!("/proc/{node_pid}/status")));
    assert!(!state.lines().any(|l| l.starts_with("State:") && l.contains('T')), "the node was stopped");
    assert!(kill(Pid::from_raw(bystander_pid), None).is_ok(), "the bystander was killed");

    // Forged log lines never reach the node's own log.
    hostile.order("forge");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!output.lock().unwrap().iter().any(|l| l.contains("FORGED-BY-BOT")));

    // 200 forks: the bot's tree never passes BOT_PIDS_MAX.
    hostile.order("forks 200");
    let forked: Vec<i32> =
        machine.bot_processes().into_iter().filter(|(_, uid)| *uid == hostile_uid).map(|(pid, _)| pid).collect();
    assert!(forked.len() <= 64, "{} processes of the bot", forked.len());
    assert!(!read(&hostile.dir.join("out-forks")).contains("made=200"), "200 children were allowed");
    // (Its sleeping children are cleared so that the bot can go on.)
    for pid in forked.iter().filter(|pid| read(Path::new(&format!("/proc/{pid}/comm"))).trim() == "sleep") {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }

    // Grandchildren (one in a session of its own) and a child that holds
    // stdout: the crash kills all of them, the bot is restarted at once,
    // and the bystander's crash at the same time is restarted too.
    hostile.order("grandchild");
    let run: Vec<i32> =
        machine.bot_processes().into_iter().filter(|(_, uid)| *uid == hostile_uid).map(|(pid, _)| pid).collect();
    assert!(run.len() > 20, "the grandchildren are there: {run:?}");
    let bystander_starts = bystander.starts();
    std::fs::write(bystander.dir.join("order"), "crash\n").unwrap();
    hostile.order_and_await_restart("hold-stdout");
    wait("the bystander restarted", Duration::from_secs(10), || bystander.starts() > bystander_starts);
    wait("nothing of the crashed run is left", Duration::from_secs(10), || {
        run.iter().all(|pid| kill(Pid::from_raw(*pid), None).is_err())
    });

    // Output floods: the node's memory stays bounded, reasons are cut.
    let rss_before = rss_kib(node_pid);
    hostile.order("flood");
    hostile.order("long-line");
    hostile.order("reason");
    hostile.wait_error("\\u{1b}[2Jrrr");
    let reason = hostile.last_error();
    assert!(reason.chars().count() <= 300, "a reason of {} characters was stored", reason.chars().count());
    let grown = rss_kib(node_pid).saturating_sub(rss_before);
    assert!(grown < 100 * 1024, "the node grew by {grown} KiB");

    // Hostile folders: a sparse 700 MiB file and a file swapped for a link
    // to the node's key file are never read into the saved state.
    // A 700 MiB file cannot even be made (no file may pass BOT_DISK_MB)...
    hostile.order("sparse 700M");
    assert!(!read(&hostile.dir.join("out-sparse")).contains("rc=0"), "a 700 MiB file was made");
    // ...and one past BOT_STATE_MAX_MB is refused, without being read.
    hostile.order("sparse 30M");
    hostile.wait_error("session state not saved");
    std::fs::remove_file(hostile.dir.join("sparse")).unwrap();
    hostile.order(&format!("swap-link {}", key.display()));
    assert!(rss_kib(node_pid).saturating_sub(rss_before) < 100 * 1024);

    // 1 GiB of memory: killed, recorded as out of memory, restarted.
    hostile.order_and_await_restart("memory");
    hostile.wait_error("out of memory");
    let exit = hostile.detail()["lastExit"].clone();
    assert!(exit["reason"].as_str().unwrap_or("").starts_with("out of memory"), "{exit}");
    assert_eq!(exit["signal"], 9, "{exit}");
    // The new run is measured: its limit, its processes, the kill counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hostile.detail()["resources"].is_null() {
        assert!(Instant::now() < deadline, "no resources for a running bot: {}", hostile.detail());
        std::thread::sleep(Duration::from_millis(200));
    }
    let resources = hostile.detail()["resources"].clone();
    assert_eq!(resources["memoryLimitBytes"], 128 * 1024 * 1024, "{resources}");
    assert!(resources["pids"].as_u64().unwrap_or(0) >= 1 && resources["oomKills"].as_u64() >= Some(1), "{resources}");
    let metrics = http(&addr, "GET", "/metrics", "", "");
    for name in ["trekker_bot_oom_kills_total", "trekker_bots_memory_bytes", "trekker_bots_pids"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    // 200 MB into its folder: stopped past BOT_DISK_MB, restarted from its saved state.
    hostile.order_and_await_restart("disk");
    hostile.wait_error("BOT_DISK_MB");
    // 150,000 empty files count as what they cost.
    hostile.order_and_await_restart("files");
    // A restored folder holds nothing of the node's.
    for file in std::fs::read_dir(&hostile.dir).unwrap().flatten() {
        assert!(!read(&file.path()).contains(key_text.trim()), "{:?} holds the node's key", file.path());
    }

    // The bystander was never disturbed beyond its own crash, and the node
    // answered /healthz throughout.
    let (failures, checks) = health.failures();
    assert!(checks > 50 && failures == 0, "/healthz failed {failures} of {checks} times");

    // A graceful stop leaves no process of any bot and no bot cgroup.
    kill(Pid::from_raw(node_pid as i32), Signal::SIGTERM).unwrap();
    let status = node.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    drop(health);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !machine.bot_processes().is_empty() {
        let left: Vec<String> = machine
            .bot_processes()
            .iter()
            .map(|(pid, _)| {
                read(Path::new(&format!("/proc/{pid}/status"))).lines().take(3).collect::<Vec<_>>().join(" ")
            })
            .collect();
        assert!(Instant::now() < deadline, "bot processes outlived the node: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for dir in &machine.cgroups {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
        assert!(left.is_empty(), "bot cgroups left in {}: {left:?}", dir.display());
    }
}
