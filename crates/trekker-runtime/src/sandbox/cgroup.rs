//! One cgroup per sandboxed bot, under the node's own (delegated) cgroup:
//! memory, processes and CPU of the bot's whole process tree are limited
//! and measured there, and the whole tree is killed through it.
//!
//! Through the cgroup file system only (no crate does both hierarchies
//! well): cgroup v2 where the node's cgroup has the memory and pids
//! controllers, else v1 with one directory per controller (these CI
//! machines mount only v1). The node finds its cgroups in
//! `/proc/self/cgroup` and the mounts in `/proc/self/mountinfo`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::SandboxError;

/// Limits of one bot's whole process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u32,
    /// 100 = one core.
    pub cpu_percent: u32,
}

/// What one bot's cgroup measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: u64,
    pub cpu_nanos: u64,
    pub pids: u64,
    pub oom_kills: u64,
}

/// Where the node's cgroups are.
#[derive(Debug, Clone)]
pub enum Hierarchy {
    /// The node's cgroup v2 directory (its processes moved to a leaf).
    V2(PathBuf),
    /// The node's cgroup directory in each v1 controller.
    V1 { memory: PathBuf, pids: PathBuf, cpu: PathBuf, cpuacct: PathBuf },
}

const CPU_PERIOD_US: u64 = 100_000;
/// Name prefix of the bots' cgroups (the rest is the bot's uid).
pub const PREFIX: &str = "trekker-bot-";

impl Hierarchy {
    /// Finds the node's cgroups and checks it may create children there.
    pub fn detect() -> Result<Self, SandboxError> {
        let own = fs::read_to_string("/proc/self/cgroup").map_err(|e| missing(format!("/proc/self/cgroup: {e}")))?;
        let mounts =
            fs::read_to_string("/proc/self/mountinfo").map_err(|e| missing(format!("/proc/self/mountinfo: {e}")))?;
        let mounts = parse_mounts(&mounts);
        if let Some(dir) = v2_dir(&own, &mounts)
            && let Ok(controllers) = fs::read_to_string(dir.join("cgroup.controllers"))
            && ["memory", "pids", "cpu"].iter().all(|c| controllers.split_whitespace().any(|have| have == *c))
        {
            prepare_v2(&dir)?;
            return Ok(Self::V2(dir));
        }
        let dir = |controller: &str| {
            v1_dir(&own, &mounts, controller).ok_or_else(|| {
                missing(format!(
                    "no cgroup v2 with the memory, pids and cpu controllers and no cgroup v1 `{controller}` hierarchy"
                ))
            })
        };
        let hierarchy =
            Self::V1 { memory: dir("memory")?, pids: dir("pids")?, cpu: dir("cpu")?, cpuacct: dir("cpuacct")? };
        for parent in hierarchy.parents() {
            writable(&parent)?;
        }
        Ok(hierarchy)
    }

    fn parents(&self) -> Vec<PathBuf> {
        match self {
            Self::V2(dir) => vec![dir.clone()],
            Self::V1 { memory, pids, cpu, cpuacct } => {
                let mut dirs = vec![memory.clone(), pids.clone(), cpu.clone(), cpuacct.clone()];
                dirs.dedup();
                dirs
            }
        }
    }

    /// The bots' cgroups left by an earlier node process (names only).
    pub fn leftovers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .parents()
            .iter()
            .filter_map(|dir| fs::read_dir(dir).ok())
            .flatten()
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| name.starts_with(PREFIX))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Creates (or reuses) the cgroup `name` with `limits`.
    pub fn create(&self, name: &str, limits: Limits) -> Result<BotCgroup, SandboxError> {
        let cgroup = BotCgroup { dirs: self.parents().iter().map(|p| p.join(name)).collect(), v2: self.is_v2() };
        // A cgroup left by a crashed run: empty it first.
        cgroup.kill_all();
        for dir in &cgroup.dirs {
            match fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(SandboxError::Setup(format!("cannot create cgroup {}: {e}", dir.display()))),
            }
        }
        let quota = u64::from(limits.cpu_percent) * CPU_PERIOD_US / 100;
        match self {
            Self::V2(_) => {
                let dir = &cgroup.dirs[0];
                set(dir, "memory.max", &limits.memory_bytes.to_string())?;
                // No swap: the memory limit is the bot's whole memory.
                let _ = fs::write(dir.join("memory.swap.max"), "0");
                set(dir, "pids.max", &limits.pids.to_string())?;
                set(dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
            }
            Self::V1 { .. } => {
                let memory = cgroup.v1("memory.limit_in_bytes");
                set(&memory, "memory.limit_in_bytes", &limits.memory_bytes.to_string())?;
                // With swap accounting, swap counts against the same limit.
                let _ = fs::write(memory.join("memory.memsw.limit_in_bytes"), limits.memory_bytes.to_string());
                set(&cgroup.v1("pids.max"), "pids.max", &limits.pids.to_string())?;
                let cpu = cgroup.v1("cpu.cfs_quota_us");
                set(&cpu, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                set(&cpu, "cpu.cfs_quota_us", &quota.to_string())?;
            }
        }
        Ok(cgroup)
    }

    fn is_v2(&self) -> bool {
        matches!(self, Self::V2(_))
    }
}

/// One bot's cgroup (a directory per v1 controller, or one v2 directory).
#[derive(Debug, Clone)]
pub struct BotCgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl BotCgroup {
    /// The `cgroup.procs` files a process writes `0` into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The v1 directory that has `file`.
    fn v1(&self, file: &str) -> PathBuf {
        self.dirs.iter().find(|d| d.join(file).exists()).cloned().unwrap_or_else(|| self.dirs[0].clone())
    }

    fn file(&self, file: &str) -> PathBuf {
        if self.v2 { self.dirs[0].join(file) } else { self.v1(file).join(file) }
    }

    /// Every process in the cgroup (host pids).
    pub fn pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .dirs
            .iter()
            .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Sends `signal` to every process of the bot but `except`.
    pub fn signal(&self, signal: Signal, except: Option<i32>) {
        for pid in self.pids() {
            if Some(pid) != except && pid > 0 {
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Kills every process of the bot and waits (briefly) until none is
    /// left. A bot forking as fast as it can is bounded by `pids.max`, so
    /// a few rounds empty it.
    pub fn kill_all(&self) {
        if self.v2 {
            let _ = fs::write(self.dirs[0].join("cgroup.kill"), "1");
        }
        for _ in 0..200 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(cgroup = ?self.dirs.first(), "processes of a bot survived 200 rounds of SIGKILL");
    }

    /// Kills what is left and removes the cgroup.
    pub fn remove(&self) {
        self.kill_all();
        for dir in &self.dirs {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    // Busy while the last tasks are being reaped.
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    /// What the bot uses now.
    pub fn usage(&self) -> Usage {
        let number = |file: &str| read_u64(&self.file(file)).unwrap_or(0);
        if self.v2 {
            Usage {
                memory_bytes: number("memory.current"),
                cpu_nanos: keyed(&self.file("cpu.stat"), "usage_usec").unwrap_or(0).saturating_mul(1000),
                pids: number("pids.current"),
                oom_kills: keyed(&self.file("memory.events"), "oom_kill").unwrap_or(0),
            }
        } else {
            Usage {
                memory_bytes: number("memory.usage_in_bytes"),
                cpu_nanos: number("cpuacct.usage"),
                pids: number("pids.current"),
                oom_kills: keyed(&self.file("memory.oom_control"), "oom_kill").unwrap_or(0),
            }
        }
    }
}

fn missing(what: String) -> SandboxError {
    SandboxError::Missing(what)
}

fn set(dir: &Path, file: &str, value: &str) -> Result<(), SandboxError> {
    fs::write(dir.join(file), value)
        .map_err(|e| SandboxError::Setup(format!("cannot set {}: {e}", dir.join(file).display())))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat-keyed file (`key value` lines).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The node may create cgroups under `dir`.
fn writable(dir: &Path) -> Result<(), SandboxError> {
    let probe = dir.join(format!("{PREFIX}probe-{}", std::process::id()));
    fs::create_dir(&probe).map_err(|e| {
        missing(format!(
            "cannot create a cgroup under {} ({e}): delegate the node's cgroup to its user (systemd `Delegate=yes`)",
            dir.display()
        ))
    })?;
    let _ = fs::remove_dir(&probe);
    Ok(())
}

/// cgroup v2 keeps processes out of cgroups that have children with
/// controllers: the node moves itself into a leaf, then enables the
/// controllers for its children.
fn prepare_v2(dir: &Path) -> Result<(), SandboxError> {
    let leaf = dir.join("trekker-node");
    if !leaf.exists() {
        fs::create_dir(&leaf).map_err(|e| missing(format!("cannot create {}: {e}", leaf.display())))?;
    }
    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter(|l| !l.trim().is_empty()) {
        fs::write(leaf.join("cgroup.procs"), pid.trim())
            .map_err(|e| missing(format!("cannot move the node into {}: {e}", leaf.display())))?;
    }
    fs::write(dir.join("cgroup.subtree_control"), "+memory +pids +cpu")
        .map_err(|e| missing(format!("cannot enable memory, pids and cpu under {}: {e}", dir.display())))
}

/// A cgroup mount: its root within the hierarchy, where it is mounted, its
/// file system type and super options (the v1 controllers).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    options: Vec<String>,
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let fstype = (*right.first()?).to_owned();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some(Mount {
                root: (*left.get(3)?).to_owned(),
                point: PathBuf::from(*left.get(4)?),
                fstype,
                options: right.get(2).map(|o| o.split(',').map(str::to_owned).collect()).unwrap_or_default(),
            })
        })
        .collect()
}

/// `path` (as in /proc/self/cgroup) under a mount of its hierarchy.
fn under(mount: &Mount, path: &str) -> Option<PathBuf> {
    let relative = path.strip_prefix(mount.root.trim_end_matches('/'))?;
    Some(mount.point.join(relative.trim_start_matches('/')))
}

fn v2_dir(own: &str, mounts: &[Mount]) -> Option<PathBuf> {
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mount = mounts.iter().find(|m| m.fstype == "cgroup2")?;
    under(mount, path)
}

fn v1_dir(own: &str, mounts: &[Mount], controller: &str) -> Option<PathBuf> {
    let path = own.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == controller).then_some(path)
    })?;
    let mount = mounts.iter().find(|m| m.fstype == "cgroup" && m.options.iter().any(|o| o == controller))?;
    under(mount, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";
    const OWN: &str = "\
9:pids:/system.slice/trekker.service
4:memory:/system.slice/trekker.service
3:cpu,cpuacct:/system.slice/trekker.service
0::/system.slice/trekker.service
";

    #[test]
    fn the_nodes_cgroups_are_found_in_both_hierarchies() {
        let mounts = parse_mounts(MOUNTINFO);
        assert_eq!(mounts.len(), 4, "only cgroup mounts");
        let dir = |c| v1_dir(OWN, &mounts, c).unwrap();
        assert_eq!(dir("memory"), Path::new("/sys/fs/cgroup/memory/system.slice/trekker.service"));
        assert_eq!(dir("cpuacct"), Path::new("/sys/fs/cgroup/cpu,cpuacct/system.slice/trekker.service"));
        assert_eq!(dir("cpu"), dir("cpuacct"), "co-mounted controllers share a directory");
        assert_eq!(v1_dir(OWN, &mounts, "freezer"), None);
        assert_eq!(v2_dir(OWN, &mounts).unwrap(), Path::new("/sys/fs/cgroup/unified/system.slice/trekker.service"));
        // Inside a cgroup namespace the mount's root is the node's own cgroup.
        let nested = parse_mounts("40 1 0:29 /a/b /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(v2_dir("0::/a/b/c\n", &nested).unwrap(), Path::new("/sys/fs/cgroup/c"));
    }

    #[test]
    fn usage_is_read_from_flat_and_keyed_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("memory.current"), "4096\n").unwrap();
        fs::write(dir.path().join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        fs::write(dir.path().join("pids.current"), "3\n").unwrap();
        fs::write(dir.path().join("memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
        let cgroup = BotCgroup { dirs: vec![dir.path().to_path_buf()], v2: true };
        assert_eq!(cgroup.usage(), Usage { memory_bytes: 4096, cpu_nanos: 1_500_000, pids: 3, oom_kills: 1 });
    }
}
