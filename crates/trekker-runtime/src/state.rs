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

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Component, Path, PathBuf};

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

/// Archives `dir`: every regular file under it, sorted by path, with no
/// owner, time or mode of its own (restoring sets 0600), so the same
/// content always gives the same archive.
pub fn snapshot(dir: &Path, limit: u64) -> Result<Snapshot, StateError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut bytes = 0u64;
    let mut builder = tar::Builder::new(Vec::new());
    for relative in &files {
        let name = relative.to_string_lossy().into_owned();
        let mut contents = Vec::new();
        fs::File::open(dir.join(relative))
            .and_then(|mut file| file.read_to_end(&mut contents))
            .map_err(|_| StateError::Unreadable(name.clone()))?;
        bytes = bytes.saturating_add(contents.len() as u64);
        if bytes > limit {
            return Err(StateError::TooLarge { bytes, limit });
        }
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(contents.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(0);
        builder.append_data(&mut header, relative, contents.as_slice()).map_err(|e| StateError::Io(e.to_string()))?;
    }
    let archive = builder.into_inner().map_err(|e| StateError::Io(e.to_string()))?;
    let digest = digest::digest(&digest::SHA256, &archive).as_ref().try_into().unwrap_or([0; 32]);
    Ok(Snapshot { archive, files: files.len() as u64, bytes, digest })
}

/// The paths (relative to `root`) of the regular files under `dir`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), StateError> {
    let relative = |path: &Path| path.strip_prefix(root).unwrap_or(path).to_string_lossy().into_owned();
    let entries = fs::read_dir(dir).map_err(|_| StateError::Unreadable(relative(dir)))?;
    for entry in entries {
        let entry = entry.map_err(|_| StateError::Unreadable(relative(dir)))?;
        let path = entry.path();
        // Not followed: a link is refused, whatever it points to.
        let kind = entry.file_type().map_err(|_| StateError::Unreadable(relative(&path)))?;
        if kind.is_dir() {
            collect(root, &path, out)?;
        } else if kind.is_file() {
            out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
        } else {
            return Err(StateError::NotARegularFile(relative(&path)));
        }
    }
    Ok(())
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
        assert_eq!((saved.files, saved.bytes), (3, 10));
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
        assert!(matches!(snapshot(big.path(), 1000), Err(StateError::TooLarge { bytes: 1200, limit: 1000 })));

        let fifo = folder(&[]);
        let made = std::process::Command::new("mkfifo").arg(fifo.path().join("pipe")).status().unwrap();
        assert!(made.success());
        assert_eq!(snapshot(fifo.path(), 1 << 20), Err(StateError::NotARegularFile("pipe".into())));
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
