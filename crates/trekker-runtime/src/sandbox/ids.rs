//! The uids (and equal gids) bots run as: one per running bot, from the
//! node's range, never the node's own and never another running bot's.
//!
//! The range: a node that is root in the machine's own user namespace uses
//! plain uids (root's `/etc/subuid` range, else [`ROOT_DEFAULT_BASE`]); a
//! node that re-executed itself into a user namespace of its own (an
//! unprivileged node, see `trekker-node`) uses the ids mapped there from its
//! `/etc/subuid` range, read from `/proc/self/uid_map`. An id is held with
//! an exclusive `flock` on a file named after it, so every node process of
//! the same user on the machine (tests run several) skips the ids another
//! holds, and a crashed node's ids free themselves.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::SandboxError;

/// First plain uid of a root node without a `/etc/subuid` range.
pub const ROOT_DEFAULT_BASE: u32 = 1_000_000_000;
/// How many ids a node uses at most (and at least needs).
pub const RANGE: u32 = 65_536;

/// A range of ids and where their locks live.
#[derive(Debug)]
pub struct IdPool {
    /// First id, as the node sees it.
    base: u32,
    count: u32,
    /// The first id as the machine sees it (names the lock folder).
    host_base: u32,
    locks: PathBuf,
    next: AtomicU32,
}

/// One id, held until dropped.
#[derive(Debug)]
pub struct BotIds {
    pub uid: u32,
    _lock: Flock<File>,
}

impl IdPool {
    /// The node's range, and its lock folder (created private).
    pub fn detect() -> Result<Self, SandboxError> {
        let uid_map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let gid_map = fs::read_to_string("/proc/self/gid_map").unwrap_or_default();
        let (base, count, host_base) = if is_initial_namespace(&uid_map) {
            let base = subordinate_range("/etc/subuid").map_or(ROOT_DEFAULT_BASE, |(start, _)| start);
            (base, RANGE, base)
        } else {
            let (inside, outside, count) = mapped_range(&uid_map).ok_or_else(|| {
                SandboxError::Missing(format!(
                    "the node's user namespace maps fewer than {RANGE} ids besides its own: give the node's user a \
                     range in /etc/subuid and /etc/subgid"
                ))
            })?;
            if mapped_range(&gid_map).map(|(i, _, c)| (i, c)) != Some((inside, count)) {
                return Err(SandboxError::Missing("/proc/self/gid_map does not map the same ids as uid_map".into()));
            }
            (inside, count.min(RANGE), outside)
        };
        let locks = std::env::temp_dir().join(format!("trekker-bot-ids-{host_base}"));
        private_dir(&locks)?;
        Ok(Self { base, count, host_base, locks, next: AtomicU32::new(0) })
    }

    /// The first id (as the machine sees it) of this node's range.
    pub fn host_base(&self) -> u32 {
        self.host_base
    }

    /// Takes a free id.
    pub fn take(&self) -> Result<BotIds, SandboxError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for step in 0..self.count {
            let uid = self.base + (start.wrapping_add(step) % self.count);
            if let Some(ids) = self.try_hold(uid) {
                return Ok(ids);
            }
        }
        Err(SandboxError::Setup(format!("all {} bot ids of this node are in use", self.count)))
    }

    /// Holds `uid` if no other process does.
    pub fn try_hold(&self, uid: u32) -> Option<BotIds> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(self.locks.join(uid.to_string()));
        let lock = Flock::lock(file.ok()?, FlockArg::LockExclusiveNonblock).ok()?;
        Some(BotIds { uid, _lock: lock })
    }
}

/// `0 0 4294967295`: the machine's own user namespace.
fn is_initial_namespace(uid_map: &str) -> bool {
    uid_map.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"]
}

/// The largest mapped range that does not hold id 0 (the node itself):
/// (first id inside, first id outside, count), at least [`RANGE`] long.
fn mapped_range(map: &str) -> Option<(u32, u32, u32)> {
    map.lines()
        .filter_map(|line| {
            let numbers: Vec<u32> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
            match numbers[..] {
                [inside, outside, count] if inside > 0 && count >= RANGE => Some((inside, outside, count)),
                _ => None,
            }
        })
        .max_by_key(|(_, _, count)| *count)
}

/// root's range in `/etc/subuid` (by name or uid 0).
fn subordinate_range(file: &str) -> Option<(u32, u32)> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.split(':');
        let (owner, start, count) = (parts.next()?, parts.next()?, parts.next()?);
        let (start, count) = (start.parse().ok()?, count.trim().parse::<u32>().ok()?);
        ((owner == "root" || owner == "0") && count >= RANGE).then_some((start, count))
    })
}

/// Creates `dir` as the node's own folder (0700), refusing one that
/// belongs to someone else or is a link (the folder is in a shared /tmp).
fn private_dir(dir: &PathBuf) -> Result<(), SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let failed = |e: std::io::Error| SandboxError::Setup(format!("bot id locks in {}: {e}", dir.display()));
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(failed)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o022 != 0 {
        return Err(SandboxError::Setup(format!(
            "{} is not a private folder of the node's user: remove it",
            dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_range_comes_from_the_namespace_map() {
        assert!(is_initial_namespace("         0          0 4294967295\n"));
        assert!(!is_initial_namespace("0 999 1\n1 200000 65536\n"));
        assert_eq!(mapped_range("0 999 1\n1 200000 65536\n"), Some((1, 200_000, 65_536)));
        assert_eq!(mapped_range("0 999 1\n1 200000 100\n"), None, "too small a range");
        assert_eq!(mapped_range("0 999 1\n"), None, "only the node itself");
    }

    /// The lock folder lives in a shared /tmp: only a private folder of
    /// the node's own user is used, never a link or one others may write.
    /// A root node takes root's range from /etc/subuid (by name or uid), if
    /// it is large enough.
    #[test]
    fn roots_subordinate_range_is_read_by_name_or_uid() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let range = RANGE.to_string();
        let by_name = file("a", &format!("alice:100000:{range}\nroot:300000:{range}\n"));
        assert_eq!(subordinate_range(&by_name), Some((300_000, RANGE)));
        assert_eq!(subordinate_range(&file("b", &format!("0:500000:{range}\n"))), Some((500_000, RANGE)));
        assert_eq!(subordinate_range(&file("c", "root:300000:100\n")), None, "too small a range");
        assert_eq!(subordinate_range(&file("d", &format!("alice:100000:{range}\n"))), None, "not root's");
        assert_eq!(subordinate_range(&dir.path().join("missing").display().to_string()), None);
    }

    #[test]
    fn the_lock_folder_must_be_the_nodes_own() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("fresh");
        private_dir(&fresh).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
        private_dir(&fresh).unwrap();

        let shared = tmp.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&shared).unwrap_err().to_string().contains("not a private folder"));
        let group = tmp.path().join("group");
        fs::create_dir(&group).unwrap();
        fs::set_permissions(&group, fs::Permissions::from_mode(0o720)).unwrap();
        assert!(private_dir(&group).is_err(), "writable by its group");
        let readable = tmp.path().join("readable");
        fs::create_dir(&readable).unwrap();
        fs::set_permissions(&readable, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(private_dir(&readable).is_ok(), "others may read, not write");

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(private_dir(&PathBuf::from(&link)).is_err(), "a link is refused");
        let file = tmp.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(private_dir(&file).is_err(), "not a folder");
    }

    #[test]
    fn an_id_is_held_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let pool =
            IdPool { base: 5000, count: 3, host_base: 5000, locks: dir.path().to_path_buf(), next: AtomicU32::new(0) };
        let taken: Vec<BotIds> = (0..3).map(|_| pool.take().unwrap()).collect();
        let mut uids: Vec<u32> = taken.iter().map(|i| i.uid).collect();
        uids.sort_unstable();
        assert_eq!(uids, [5000, 5001, 5002], "never the same id twice");
        assert!(pool.take().is_err(), "the range is exhausted");
        assert!(pool.try_hold(5001).is_none());
        drop(taken);
        assert_eq!(pool.try_hold(5001).map(|i| i.uid), Some(5001), "a dropped id is free again");
    }
}
