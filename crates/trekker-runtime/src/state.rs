//! A bot's session folder as one snapshot: archived (tar, in memory) to be
//! saved, and restored all at once before the bot starts (invariant 9).
//!
//! Hostile input both ways. Archiving refuses anything but regular files and
//! folders (a link could point anywhere on the node), files it cannot read,
//! and a folder larger than the limit. Restoring refuses entries that are
//! not regular files or folders, paths that are absolute or climb out
//! (`..`), and archives past the limit; it writes into a fresh sibling
//! folder and renames it into place, so the bot never sees a half-restored
//! folder. Folders are 0700, files 0600.

use std::ffi::CString;
use std::fs;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat, fstatat};
use ring::digest;

/// Why a folder or an archive was refused (for the bot's status and an
/// activity: says what, never what is inside).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("the session folder holds {bytes} bytes, over the limit of {limit}")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("`{0}` is not a regular file (links and devices are not kept)")]
    NotARegularFile(String),
    #[error("`{0}` cannot be read")]
    Unreadable(String),
    #[error("`{0}` is nested too deeply")]
    TooDeep(String),
    #[error("`{0}` is not a name inside the folder")]
    BadName(String),
    #[error("the saved state is not a valid archive: {0}")]
    BadArchive(String),
    #[error("cannot write the session folder: {0}")]
    Io(String),
}

impl StateError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::NotARegularFile(_) => "not_a_regular_file",
            Self::Unreadable(_) => "unreadable",
            Self::TooDeep(_) => "too_deep",
            Self::BadName(_) => "bad_name",
            Self::BadArchive(_) => "bad_archive",
            Self::Io(_) => "io",
        }
    }
}

/// An archived folder.
#[derive(Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub archive: Vec<u8>,
    pub files: u64,
    pub bytes: u64,
    /// SHA-256 of the archive: an unchanged folder is not saved again.
    pub digest: [u8; 32],
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("files", &self.files).field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

/// What one entry costs in an archive besides its data: its tar header.
/// Counting it keeps 150,000 empty files from passing as an empty folder.
pub const ENTRY_BYTES: u64 = 512;
/// Deepest folder nesting walked (each level holds a descriptor open).
pub const MAX_DEPTH: usize = 32;

/// Archives `dir`: every regular file under it, in path order, with no
/// owner, time or mode of its own (restoring sets 0600), so the same
/// content always gives the same archive.
///
/// The folder belongs to a running, hostile bot, which may swap a file for
/// a link, a pipe or a huge sparse file at any moment. So nothing is
/// opened by path: each entry is opened relative to its folder's
/// descriptor without following links (`O_NOFOLLOW`; pipes do not block),
/// then the opened descriptor is checked (a regular file, and its size)
/// before a byte is read. Archive bytes, headers included, count against
/// `limit` as they are added.
pub fn snapshot(dir: &Path, limit: u64) -> Result<Snapshot, StateError> {
    let mut builder = tar::Builder::new(Vec::new());
    let (mut bytes, mut files) = (0u64, 0u64);
    walk(dir, &mut |entry| {
        bytes = bytes.saturating_add(ENTRY_BYTES);
        if let Entry::File { relative, file, size } = entry {
            bytes = bytes.saturating_add(size.div_ceil(ENTRY_BYTES) * ENTRY_BYTES);
            if bytes > limit {
                return Err(StateError::TooLarge { bytes, limit });
            }
            let mut contents = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            // Never more than the size checked above, however the file grows.
            file.take(size).read_to_end(&mut contents).map_err(|_| StateError::Unreadable(name(relative)))?;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(contents.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(0);
            builder
                .append_data(&mut header, relative, contents.as_slice())
                .map_err(|e| StateError::Io(e.to_string()))?;
            files += 1;
        }
        if bytes > limit {
            return Err(StateError::TooLarge { bytes, limit });
        }
        Ok(())
    })?;
    let archive = builder.into_inner().map_err(|e| StateError::Io(e.to_string()))?;
    let digest = digest::digest(&digest::SHA256, &archive).as_ref().try_into().unwrap_or([0; 32]);
    Ok(Snapshot { archive, files, bytes, digest })
}

/// The disk a folder takes: allocated blocks plus [`ENTRY_BYTES`] per
/// entry (links and other odd entries count, they are not followed).
/// Stops counting once past `stop_after`. 0 when it cannot be read.
pub fn disk_usage(dir: &Path, stop_after: u64) -> u64 {
    let mut used = 0u64;
    let _ = walk_entries(dir, &mut |meta: &nix::sys::stat::FileStat| {
        let blocks = u64::try_from(meta.st_blocks).unwrap_or(0).saturating_mul(512);
        used = used.saturating_add(ENTRY_BYTES).saturating_add(blocks);
        if used > stop_after { Err(StateError::TooLarge { bytes: used, limit: stop_after }) } else { Ok(()) }
    });
    used
}

/// One entry of a walked folder.
enum Entry<'a> {
    Dir,
    /// A regular file, opened; `size` as its descriptor said.
    File {
        relative: &'a Path,
        file: fs::File,
        size: u64,
    },
}

fn name(relative: &Path) -> String {
    relative.to_string_lossy().into_owned()
}

/// Visits every entry under `dir`, in path order, refusing anything that
/// is not a folder or a regular file.
fn walk(dir: &Path, visit: &mut dyn FnMut(Entry<'_>) -> Result<(), StateError>) -> Result<(), StateError> {
    let root = open_dir(None, dir).map_err(|_| StateError::Unreadable(String::new()))?;
    walk_dir(&root, &PathBuf::new(), 0, visit)
}

fn walk_dir(
    dir: &OwnedFd,
    relative: &Path,
    depth: usize,
    visit: &mut dyn FnMut(Entry<'_>) -> Result<(), StateError>,
) -> Result<(), StateError> {
    if depth > MAX_DEPTH {
        return Err(StateError::TooDeep(name(relative)));
    }
    for entry in list(dir).map_err(|_| StateError::Unreadable(name(relative)))? {
        let path = relative.join(std::ffi::OsStr::from_bytes(entry.as_bytes()));
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        // A link fails here (ELOOP) whatever it points to.
        let fd = openat(dir, entry.as_c_str(), flags, Mode::empty()).map_err(|_| not_regular_or_unreadable(&path))?;
        let meta = fstat(&fd).map_err(|_| StateError::Unreadable(name(&path)))?;
        match SFlag::from_bits_truncate(meta.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFDIR => {
                visit(Entry::Dir)?;
                walk_dir(&fd, &path, depth + 1, visit)?;
            }
            SFlag::S_IFREG => {
                let size = u64::try_from(meta.st_size).unwrap_or(0);
                visit(Entry::File { relative: &path, file: fs::File::from(fd), size })?;
            }
            _ => return Err(StateError::NotARegularFile(name(&path))),
        }
    }
    Ok(())
}

/// Like [`walk`] for sizes only: every entry is looked at, none opened
/// (odd entries are counted, not refused).
fn walk_entries(
    dir: &Path,
    visit: &mut dyn FnMut(&nix::sys::stat::FileStat) -> Result<(), StateError>,
) -> Result<(), StateError> {
    fn inner(
        dir: &OwnedFd,
        depth: usize,
        visit: &mut dyn FnMut(&nix::sys::stat::FileStat) -> Result<(), StateError>,
    ) -> Result<(), StateError> {
        let unreadable = |_| StateError::Unreadable(String::new());
        for entry in list(dir).map_err(unreadable)? {
            let meta = fstatat(dir, entry.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(unreadable)?;
            visit(&meta)?;
            if SFlag::from_bits_truncate(meta.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR && depth < MAX_DEPTH {
                let child = open_dir(Some(dir), Path::new(std::ffi::OsStr::from_bytes(entry.as_bytes())))
                    .map_err(unreadable)?;
                inner(&child, depth + 1, visit)?;
            }
        }
        Ok(())
    }
    let root = open_dir(None, dir).map_err(|_| StateError::Unreadable(String::new()))?;
    inner(&root, 0, visit)
}

fn not_regular_or_unreadable(path: &Path) -> StateError {
    StateError::NotARegularFile(name(path))
}

/// Opens a folder without following a link (relative to `at`, or as given).
fn open_dir(at: Option<&OwnedFd>, path: &Path) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match at {
        Some(dir) => openat(dir, path, flags, Mode::empty()),
        None => openat(AT_FDCWD, path, flags, Mode::empty()),
    }
}

/// The names in a folder (not `.` or `..`), sorted.
fn list(dir: &OwnedFd) -> nix::Result<Vec<CString>> {
    let listing = nix::unistd::dup(dir)?;
    let mut handle = Dir::from_fd(listing)?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Restores `archive` as `dir` (which must not hold a running bot's
/// files): all of it, or nothing.
pub fn restore(archive: &[u8], dir: &Path, limit: u64) -> Result<(), StateError> {
    let staging = staging_dir(dir);
    let _ = fs::remove_dir_all(&staging);
    create_private_dir(&staging)?;
    let written = unpack(archive, &staging, limit);
    let placed = written.and_then(|()| {
        let _ = fs::remove_dir_all(dir);
        fs::rename(&staging, dir).map_err(|e| StateError::Io(e.to_string()))
    });
    if placed.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    placed
}

/// Where a folder is built before it is renamed into place.
fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".restoring");
    dir.with_file_name(name)
}

fn unpack(archive: &[u8], into: &Path, limit: u64) -> Result<(), StateError> {
    let bad = |e: std::io::Error| StateError::BadArchive(e.to_string());
    let mut total = 0u64;
    let mut entries = tar::Archive::new(archive);
    for entry in entries.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let name = path.to_string_lossy().into_owned();
        let inside = !name.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !inside {
            return Err(StateError::BadName(name));
        }
        let target = into.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => create_private_dir(&target)?,
            tar::EntryType::Regular => {
                total = total.saturating_add(entry.size());
                if total > limit {
                    return Err(StateError::TooLarge { bytes: total, limit });
                }
                if let Some(parent) = target.parent() {
                    create_private_dir(parent)?;
                }
                let mut contents = Vec::new();
                entry.read_to_end(&mut contents).map_err(bad)?;
                write_private_file(&target, &contents)?;
            }
            _ => return Err(StateError::NotARegularFile(name)),
        }
    }
    Ok(())
}

/// Creates `path` (and missing parents) readable by the node's user only.
pub fn create_private_dir(path: &Path) -> Result<(), StateError> {
    fs::create_dir_all(path).map_err(|e| StateError::Io(format!("{}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(|e| StateError::Io(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Writes a new file readable by the node's user only (an existing file of
/// that name is replaced).
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let _ = fs::remove_file(path);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| StateError::Io(format!("{}: {e}", path.display())))?;
    file.write_all(contents).map_err(|e| StateError::Io(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn folder(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            let path = dir.path().join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }
        dir
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_folder_comes_back_whole_and_private() {
        let source = folder(&[("creds.json", b"{\"a\":1}"), ("session-1.json", b"s1"), ("keys/app-state-1", b"k")]);
        let saved = snapshot(source.path(), 1 << 20).unwrap();
        // Three files and a folder, each with its header, data in 512-byte blocks.
        assert_eq!((saved.files, saved.bytes), (3, 4 * ENTRY_BYTES + 3 * ENTRY_BYTES));
        assert_eq!(snapshot(source.path(), 1 << 20).unwrap().digest, saved.digest, "the same folder, the same archive");
        let target = tempfile::tempdir().unwrap();
        let dir = target.path().join("bot");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("left-over"), b"x").unwrap();
        restore(&saved.archive, &dir, 1 << 20).unwrap();
        assert_eq!(fs::read(dir.join("keys/app-state-1")).unwrap(), b"k");
        assert_eq!(fs::read(dir.join("creds.json")).unwrap(), b"{\"a\":1}");
        assert!(!dir.join("left-over").exists(), "the folder is the snapshot, nothing else");
        assert_eq!((mode(&dir), mode(&dir.join("keys")), mode(&dir.join("session-1.json"))), (0o700, 0o700, 0o600));
        assert!(!staging_dir(&dir).exists());
    }

    #[test]
    fn links_unreadable_files_and_oversized_folders_are_refused() {
        let linked = folder(&[("creds.json", b"{}")]);
        std::os::unix::fs::symlink("/etc/passwd", linked.path().join("passwd")).unwrap();
        assert_eq!(snapshot(linked.path(), 1 << 20), Err(StateError::NotARegularFile("passwd".into())));

        let big = folder(&[("a", &[0u8; 600]), ("b", &[0u8; 600])]);
        assert!(matches!(snapshot(big.path(), 2000), Err(StateError::TooLarge { bytes: 3072, limit: 2000 })));

        let fifo = folder(&[]);
        let made = std::process::Command::new("mkfifo").arg(fifo.path().join("pipe")).status().unwrap();
        assert!(made.success());
        assert_eq!(snapshot(fifo.path(), 1 << 20), Err(StateError::NotARegularFile("pipe".into())));
    }

    #[test]
    fn sparse_files_many_empty_files_and_deep_folders_are_refused_without_reading_them() {
        const MIB: u64 = 1 << 20;
        let sparse = folder(&[("creds.json", b"{}")]);
        let file = fs::File::create(sparse.path().join("huge")).unwrap();
        file.set_len(700 * MIB).unwrap();
        assert!(matches!(snapshot(sparse.path(), 16 * MIB), Err(StateError::TooLarge { .. })));
        assert!(disk_usage(sparse.path(), u64::MAX) < MIB, "a sparse file takes no disk");

        let many = folder(&[]);
        for n in 0..40_000 {
            fs::File::create(many.path().join(n.to_string())).unwrap();
        }
        assert!(matches!(snapshot(many.path(), 16 * MIB), Err(StateError::TooLarge { .. })), "headers count");
        assert!(disk_usage(many.path(), u64::MAX) >= 40_000 * ENTRY_BYTES);
        assert!(disk_usage(many.path(), 1000) < 10_000, "counting stops past the limit");

        let deep = folder(&[]);
        let mut path = deep.path().to_path_buf();
        for _ in 0..=MAX_DEPTH + 1 {
            path.push("d");
        }
        fs::create_dir_all(&path).unwrap();
        assert!(matches!(snapshot(deep.path(), 16 * MIB), Err(StateError::TooDeep(_))));
    }

    /// The limits are inclusive: a folder of exactly `limit` bytes, or
    /// exactly MAX_DEPTH folders deep, is kept; one byte or one folder more
    /// is not.
    #[test]
    fn limits_hold_at_their_bounds() {
        // Two files of 600 bytes: 512 of header and 1,024 of blocks each.
        let big = folder(&[("a", &[0u8; 600]), ("b", &[0u8; 600])]);
        assert_eq!(snapshot(big.path(), 3072).map(|s| s.files), Ok(2));
        assert!(matches!(snapshot(big.path(), 3071), Err(StateError::TooLarge { .. })));

        let nest = |levels: usize| {
            let deep = folder(&[]);
            let mut path = deep.path().to_path_buf();
            for _ in 0..levels {
                path.push("d");
            }
            fs::create_dir_all(&path).unwrap();
            fs::write(path.join("f"), b"x").unwrap();
            deep
        };
        assert_eq!(snapshot(nest(MAX_DEPTH).path(), 1 << 20).map(|s| s.files), Ok(1));
        let nested = nest(3);
        fs::write(nested.path().join("d/d/d/blob"), vec![7u8; 40_000]).unwrap();
        assert!(disk_usage(nested.path(), u64::MAX) >= 40_000, "what is deep down counts");
        assert!(matches!(snapshot(nest(MAX_DEPTH + 1).path(), 1 << 20), Err(StateError::TooDeep(_))));
    }

    /// Metrics count refusals by kind: each kind has a label of its own.
    #[test]
    fn each_refusal_has_its_own_label() {
        let errors = [
            StateError::TooLarge { bytes: 2, limit: 1 },
            StateError::NotARegularFile(String::new()),
            StateError::Unreadable(String::new()),
            StateError::TooDeep(String::new()),
            StateError::BadName(String::new()),
            StateError::BadArchive(String::new()),
            StateError::Io(String::new()),
        ];
        let labels: std::collections::HashSet<&str> = errors.iter().map(StateError::kind).collect();
        assert_eq!(labels.len(), errors.len(), "{labels:?}");
        assert!(labels.iter().all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_')), "{labels:?}");
        assert_eq!(errors[0].kind(), "too_large");
    }

    #[test]
    fn a_link_where_the_folder_was_is_not_followed() {
        let outside = folder(&[("secret", b"node secret")]);
        let holder = tempfile::tempdir().unwrap();
        let dir = holder.path().join("bot");
        std::os::unix::fs::symlink(outside.path(), &dir).unwrap();
        assert!(snapshot(&dir, 1 << 20).is_err(), "the bot's folder itself swapped for a link");
        let inner = folder(&[("creds.json", b"{}")]);
        std::os::unix::fs::symlink(outside.path(), inner.path().join("sub")).unwrap();
        assert_eq!(snapshot(inner.path(), 1 << 20), Err(StateError::NotARegularFile("sub".into())));
    }

    /// A bot swaps a file for a link to a node secret again and again while
    /// the node archives its folder: no archive ever holds the secret.
    #[test]
    fn a_link_swapped_in_during_a_snapshot_is_never_followed() {
        let outside = folder(&[("key", b"THE-NODE-SECRET")]);
        let bot = folder(&[("creds.json", b"{}")]);
        let dir = bot.path().to_path_buf();
        let secret = outside.path().join("key");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, stop) = (dir.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = fs::write(dir.join("swap.tmp"), b"harmless");
                    let _ = fs::rename(dir.join("swap.tmp"), dir.join("swap"));
                    let _ = std::os::unix::fs::symlink(&secret, dir.join("swap.lnk"));
                    let _ = fs::rename(dir.join("swap.lnk"), dir.join("swap"));
                }
            })
        };
        let (mut saved, mut refused) = (0, 0);
        for _ in 0..400 {
            match snapshot(&dir, 1 << 20) {
                Ok(snap) => {
                    saved += 1;
                    let text = String::from_utf8_lossy(&snap.archive).into_owned();
                    assert!(!text.contains("THE-NODE-SECRET"), "the link was followed");
                }
                Err(_) => refused += 1,
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(saved + refused == 400 && refused > 0, "the race was run ({saved} saved, {refused} refused)");
    }

    /// A hand-made archive with one entry of `kind` at raw `path`.
    fn hostile_archive(path: &str, kind: tar::EntryType, contents: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        // Written raw: the builder itself refuses `..`.
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_size(contents.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, contents).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn hostile_archives_write_nothing() {
        let target = tempfile::tempdir().unwrap();
        let dir = target.path().join("bot");
        let cases = [
            (hostile_archive("../escape", tar::EntryType::Regular, b"x"), "climbs out"),
            (hostile_archive("/etc/evil", tar::EntryType::Regular, b"x"), "absolute"),
            (hostile_archive("link", tar::EntryType::Symlink, b""), "a link"),
            (hostile_archive("dev", tar::EntryType::Char, b""), "a device"),
            (hostile_archive("big", tar::EntryType::Regular, &[1u8; 2048]), "over the limit"),
            (b"not an archive at all, just bytes that go on for a while....".repeat(20), "garbage"),
        ];
        for (archive, what) in cases {
            assert!(restore(&archive, &dir, 1024).is_err(), "{what} was restored");
            assert!(!dir.exists() && !staging_dir(&dir).exists(), "{what} left files behind");
            assert!(!target.path().join("escape").exists());
        }
    }
}
