//! The sandbox of a `process` bot (BOT_SANDBOX=on, DESIGN.md invariant 10):
//! the bot is a tenant, its code hostile.
//!
//! Built from the kernel's mechanisms through well-kept tools, not path
//! checks:
//! - a uid and gid of its own per running bot ([`ids`]), switched to by
//!   util-linux's `setpriv` once the view is set up, with no supplementary
//!   groups and no capabilities;
//! - bubblewrap (`bwrap`): new PID, IPC and UTS namespaces and a mount
//!   namespace where the system folders are read-only, the bot's own
//!   `AUTH_DIR` and a private `/tmp` are the only writable places, and the
//!   node's files (working folder, database, key file, other bots' folders)
//!   are not there at all; `no_new_privs`; a fresh `/proc` that shows only
//!   the bot's processes; an empty environment but for what the contract
//!   gives; killed with the node;
//! - a cgroup per bot ([`cgroup`]) for memory, processes and CPU of the
//!   whole tree, which a stop empties;
//! - rlimits as a last layer (`prlimit`): no file larger than the disk
//!   limit, no core dumps.
//!
//! The node is root over the bots' ids: either it is root, or it
//! re-executed itself into a user namespace of its own where its user's
//! subordinate ids are mapped (see `trekker-node`). [`Sandbox::prepare`]
//! checks all of it, and a sandboxed `id -u` proves it, before the node
//! serves; what is missing is said exactly.

pub mod cgroup;
pub mod ids;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

pub use cgroup::{BotCgroup, Limits, Usage};
pub use ids::BotIds;

/// Why a sandbox cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The machine lacks something (a tool, ids, delegated cgroups).
    #[error("cannot isolate bots: {0}")]
    Missing(String),
    /// Setting up one bot failed.
    #[error("sandbox: {0}")]
    Setup(String),
}

/// What the operator configured.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub limits: Limits,
    /// Largest `AUTH_DIR` while the bot runs (BOT_DISK_MB), also the
    /// largest file it may write and the size of its `/tmp`.
    pub disk_bytes: u64,
    /// Folders of the node that must not be seen from a bot even when a
    /// system folder holds them (working folder, database and key file
    /// folders, BOT_AUTH_DIR, the folders of secret files).
    pub hidden: Vec<PathBuf>,
}

/// The system folders a bot sees, read-only (those that exist).
const SYSTEM: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt"];
/// PATH inside the sandbox.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// A machine's ability to isolate bots, checked.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    ids: ids::IdPool,
    cgroups: cgroup::Hierarchy,
    bwrap: PathBuf,
    setpriv: PathBuf,
    prlimit: PathBuf,
    env: PathBuf,
    shell: PathBuf,
}

/// One bot's isolation while it runs: its ids and cgroup, released (the
/// cgroup emptied and removed) when dropped.
#[derive(Debug)]
pub struct Cell {
    pub ids: BotIds,
    pub cgroup: BotCgroup,
}

impl Drop for Cell {
    fn drop(&mut self) {
        self.cgroup.remove();
    }
}

impl Sandbox {
    /// Checks that bots can be isolated here and says what is missing.
    /// Cgroups left by an earlier run of a node of this user are emptied.
    pub fn prepare(config: SandboxConfig) -> Result<Arc<Self>, SandboxError> {
        let tool = |name: &str, package: &str| {
            find_program(name)
                .ok_or_else(|| SandboxError::Missing(format!("`{name}` is not installed (Debian package `{package}`)")))
        };
        let (bwrap, setpriv) = (tool("bwrap", "bubblewrap")?, tool("setpriv", "util-linux")?);
        let (prlimit, shell) = (tool("prlimit", "util-linux")?, tool("sh", "dash")?);
        let env = tool("env", "coreutils")?;
        if !nix::unistd::geteuid().is_root() {
            return Err(SandboxError::Missing(
                "the node is neither root nor root of a user namespace of its own (start it through \
                 `trekker-node`, which enters one when its user has /etc/subuid and /etc/subgid ranges and \
                 `newuidmap` is installed)"
                    .into(),
            ));
        }
        let ids = ids::IdPool::detect()?;
        let cgroups = cgroup::Hierarchy::detect()?;
        let sandbox = Self { config, ids, cgroups, bwrap, setpriv, prlimit, env, shell };
        sandbox.clean_leftovers();
        Ok(Arc::new(sandbox))
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Empties and removes the cgroups of bots whose id no live node holds.
    fn clean_leftovers(&self) {
        for name in self.cgroups.leftovers() {
            let Some(uid) = name.strip_prefix(cgroup::PREFIX).and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some(_held) = self.ids.try_hold(uid)
                && let Ok(cgroup) = self.cgroups.create(&name, self.config.limits)
            {
                tracing::warn!(cgroup = %name, "removing a bot cgroup left by an earlier node process");
                cgroup.remove();
            }
        }
    }

    /// Takes an id and a cgroup for one run (blocking file system work).
    pub fn cell(&self) -> Result<Cell, SandboxError> {
        let ids = self.ids.take()?;
        let cgroup = self.cgroups.create(&format!("{}{}", cgroup::PREFIX, ids.uid), self.config.limits)?;
        Ok(Cell { ids, cgroup })
    }

    /// The command that runs `program args` as the cell's uid inside the
    /// sandbox, with `auth_dir` its only writable folder besides `/tmp`
    /// and `env` its whole environment. The first process joins the cell's
    /// cgroup before anything else runs, so every descendant is in it.
    pub fn command(
        &self,
        cell: &Cell,
        program: &str,
        args: &[String],
        auth_dir: &Path,
        env: &[(&str, String)],
    ) -> Command {
        let uid = cell.ids.uid;
        // Paths as the sandbox can resolve them (`..` climbs through
        // folders that are not in its view).
        let program = canonical(program);
        let args: Vec<String> = args.iter().map(|a| canonical(a)).collect();
        let (program, args) = (program.as_str(), args.as_slice());
        let mut argv: Vec<OsString> = vec!["-c".into(), JOIN_CGROUP.into(), "trekker-sandbox".into()];
        argv.extend(cell.cgroup.procs_files().into_iter().map(OsString::from));
        argv.push("--".into());
        argv.push(self.bwrap.clone().into());
        argv.extend(self.bwrap_args(program, args, auth_dir, env));
        argv.push("--".into());
        argv.push(self.setpriv.clone().into());
        for arg in [format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()] {
            argv.push(arg.into());
        }
        // The bot starts in its folder (entered as its own uid: the node's
        // root may not enter a 0700 folder of another uid).
        argv.extend(["--inh-caps=-all".into(), "--".into(), self.env.clone().into(), "-C".into()]);
        argv.extend([auth_dir.as_os_str().to_owned(), self.prlimit.clone().into()]);
        argv.push(format!("--fsize={}", self.config.disk_bytes).into());
        argv.extend(["--core=0".into(), "--".into(), program.into()]);
        argv.extend(args.iter().map(OsString::from));
        let mut command = Command::new(&self.shell);
        command.args(argv).env_clear();
        command
    }

    fn bwrap_args(&self, program: &str, args: &[String], auth_dir: &Path, env: &[(&str, String)]) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        push(&mut out, &[&"--unshare-pid", &"--unshare-ipc", &"--unshare-uts", &"--unshare-cgroup-try"]);
        push(&mut out, &[&"--die-with-parent", &"--new-session", &"--hostname", &"trekker-bot"]);
        // The bot ends with no capability (setpriv changes the uid with
        // these two; `no_new_privs` is set by bwrap).
        push(&mut out, &[&"--cap-drop", &"ALL", &"--cap-add", &"CAP_SETUID", &"--cap-add", &"CAP_SETGID"]);
        push(&mut out, &[&"--clearenv"]);
        for (name, value) in env {
            push(&mut out, &[&"--setenv", name, value]);
        }
        let mut bound: Vec<PathBuf> = Vec::new();
        for dir in SYSTEM.iter().map(Path::new) {
            match std::fs::symlink_metadata(dir) {
                Ok(meta) if meta.is_symlink() => {
                    if let Ok(target) = std::fs::read_link(dir) {
                        push(&mut out, &[&"--symlink", &target, &dir]);
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    push(&mut out, &[&"--ro-bind", &dir, &dir]);
                    bound.push(dir.to_path_buf());
                }
                _ => {}
            }
        }
        // The node's own folders are masked wherever a system folder holds them.
        for hidden in &self.config.hidden {
            if hidden.is_dir() && bound.iter().any(|b| hidden.starts_with(b)) {
                push(&mut out, &[&"--tmpfs", hidden]);
            }
        }
        push(&mut out, &[&"--proc", &"/proc", &"--dev", &"/dev"]);
        let size = self.config.disk_bytes.to_string();
        push(&mut out, &[&"--perms", &"1777", &"--size", &size, &"--tmpfs", &"/tmp"]);
        // The bot's program and scripts named by absolute path elsewhere
        // (e.g. under /srv, even under /tmp): their folders, read-only,
        // after the masks (`program_folders` refused any that holds the node's).
        for folder in program_folders(program, args) {
            if !bound.iter().any(|b| folder.starts_with(b)) {
                open_ancestors(&mut out, &folder);
                out.extend(["--ro-bind".into(), folder.clone().into(), folder.clone().into()]);
                bound.push(folder);
            }
        }
        open_ancestors(&mut out, auth_dir);
        out.extend(["--bind".into(), auth_dir.into(), auth_dir.into(), "--chdir".into(), "/".into()]);
        out
    }

    /// Checks that the folders of BOT_COMMAND's program and scripts (shown
    /// to every bot, read-only) hold none of the node's own folders.
    pub fn check_command(&self, program: &str, args: &[String]) -> Result<(), SandboxError> {
        check_command(&self.config.hidden, program, args)
    }

    /// Hands the bot's folder to its uid (the node reads and removes it
    /// later as root of the ids).
    pub fn give_folder(&self, cell: &Cell, dir: &Path) -> Result<(), SandboxError> {
        chown_tree(dir, cell.ids.uid).map_err(|e| SandboxError::Setup(format!("cannot hand over AUTH_DIR: {e}")))
    }

    /// Runs `id -u` in a sandbox and checks it is the bot's uid, not the
    /// node's: the proof that isolation works here, before the node serves.
    pub async fn self_test(self: &Arc<Self>, scratch: &Path) -> Result<(), SandboxError> {
        let this = self.clone();
        let cell = tokio::task::spawn_blocking(move || this.cell())
            .await
            .map_err(|e| SandboxError::Setup(e.to_string()))??;
        let folder = scratch.join(format!(".sandbox-check-{}", cell.ids.uid));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).map_err(|e| SandboxError::Setup(format!("{}: {e}", folder.display())))?;
        self.give_folder(&cell, &folder)?;
        let id = find_program("id").unwrap_or_else(|| PathBuf::from("/usr/bin/id"));
        let args = vec!["-u".to_owned()];
        let output = self
            .command(&cell, &id.to_string_lossy(), &args, &folder, &[("PATH", PATH.to_owned())])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        let _ = std::fs::remove_dir_all(&folder);
        let output = output.map_err(|e| SandboxError::Missing(format!("cannot run bwrap: {e}")))?;
        let said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !output.status.success() || said != cell.ids.uid.to_string() {
            let why = crate::output::escape(String::from_utf8_lossy(&output.stderr).trim(), 400);
            return Err(SandboxError::Missing(format!(
                "a sandboxed `id -u` printed {said:?}, not {} ({}): {why}",
                cell.ids.uid, output.status
            )));
        }
        Ok(())
    }
}

fn push(out: &mut Vec<OsString>, words: &[&dyn AsRef<std::ffi::OsStr>]) {
    out.extend(words.iter().map(|w| w.as_ref().into()));
}

/// The folders above a mount point exist in the view as empty, open ones
/// (bwrap would make them 0700, closed to the bot's uid).
fn open_ancestors(out: &mut Vec<OsString>, path: &Path) {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).filter(|a| a.parent().is_some()).collect();
    ancestors.reverse();
    for ancestor in ancestors {
        out.extend(["--perms".into(), "0755".into(), "--dir".into(), ancestor.into()]);
    }
}

/// The first words of every sandboxed command: join the bot's cgroups,
/// then become bwrap. Paths are arguments, never part of the script.
const JOIN_CGROUP: &str = r#"while [ "$1" != -- ]; do echo 0 > "$1" || exit 125; shift; done; shift; exec "$@""#;

/// Gives `dir` and everything under it to `uid` (and the equal gid),
/// never following a link.
fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    let owner = Some(nix::unistd::Uid::from_raw(uid));
    let group = Some(nix::unistd::Gid::from_raw(uid));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
        nix::unistd::fchownat(nix::fcntl::AT_FDCWD, &path, owner, group, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(std::io::Error::from)?;
    }
    Ok(())
}

fn check_command(hidden: &[PathBuf], program: &str, args: &[String]) -> Result<(), SandboxError> {
    let args: Vec<String> = args.iter().map(|a| canonical(a)).collect();
    for folder in program_folders(&canonical(program), &args) {
        if let Some(hidden) = hidden.iter().find(|h| h.starts_with(&folder)) {
            return Err(SandboxError::Missing(format!(
                "BOT_COMMAND names {}, a folder every bot would see, and it holds the node's own {}: put the bot's \
                 program elsewhere (e.g. under /opt)",
                folder.display(),
                hidden.display()
            )));
        }
    }
    Ok(())
}

/// The folders of the words of a command that are absolute paths of files.
fn program_folders(program: &str, args: &[String]) -> Vec<PathBuf> {
    std::iter::once(program)
        .chain(args.iter().map(String::as_str))
        .map(Path::new)
        .filter(|path| path.is_absolute() && path.is_file())
        .filter_map(|path| path.parent().map(Path::to_path_buf))
        .collect()
}

/// An absolute path that exists, without links or `..`; anything else as is.
fn canonical(word: &str) -> String {
    if !word.starts_with('/') {
        return word.to_owned();
    }
    std::fs::canonicalize(word).map_or_else(|_| word.to_owned(), |p| p.to_string_lossy().into_owned())
}

/// `name` on PATH (or the usual system folders).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Paths are shown to the sandbox as they really are (links resolved);
    /// words that are not absolute paths, or do not exist, stay as given.
    #[test]
    fn programs_are_found_on_the_path_or_in_the_system_folders() {
        let sh = find_program("sh").expect("sh is installed");
        assert!(sh.is_file() && sh.ends_with("sh"), "{sh:?}");
        assert_eq!(find_program("no-such-program-trekker"), None);
    }

    #[test]
    fn absolute_paths_are_resolved_and_other_words_kept() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(canonical(&link.display().to_string()), real.display().to_string());
        assert_eq!(canonical("bot.js"), "bot.js");
        assert_eq!(canonical("--flag=/x"), "--flag=/x");
        assert_eq!(canonical("/no/such/file"), "/no/such/file");
    }

    #[test]
    fn a_command_whose_folder_holds_the_nodes_files_is_refused() {
        let node = tempfile::tempdir().unwrap();
        let root = node.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("bots")).unwrap();
        std::fs::create_dir_all(root.join("app")).unwrap();
        for script in ["bot.sh", "app/bot.sh"] {
            std::fs::write(root.join(script), "#!/bin/sh\n").unwrap();
        }
        let hidden = vec![root.clone(), root.join("bots")];
        let beside = root.join("bot.sh").display().to_string();
        let refused = check_command(&hidden, "/bin/sh", &[beside]).unwrap_err();
        assert!(refused.to_string().contains("holds the node's own"), "{refused}");
        // A folder of its own below the node's is shown alone: fine.
        let below = root.join("app/bot.sh").display().to_string();
        assert!(check_command(&hidden, "/bin/sh", &[below]).is_ok());
        assert!(check_command(&hidden, "/bin/sh", &["-c".into()]).is_ok(), "words that are not files");
    }
}
