//! An unprivileged node enters a user namespace of its own before it
//! starts, where it is root over its own uid and its user's subordinate
//! ids (`/etc/subuid`, `/etc/subgid`): the ids its sandboxed bots run as
//! (trekker_runtime::sandbox).
//!
//! util-linux's `unshare` does it (it runs the setuid `newuidmap` and
//! `newgidmap` for us), then executes this binary again with the same
//! arguments, in the same process: signals and the service manager see
//! the same pid. Nothing else changes: the network, the files (the node's
//! own are still its own) and the cgroup stay.

use std::os::unix::process::CommandExt as _;

/// Set in the environment of the re-executed node, so it happens once.
const MARKER: &str = "TREKKER_NODE_IN_USERNS";

/// Re-executes the node inside its own user namespace when it is not root
/// and will run sandboxed bots. Returns only when it need not (or with why
/// it cannot).
pub fn enter_if_needed() -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    if std::env::var_os(MARKER).is_some() {
        return Err("the node entered a user namespace but is not root there".into());
    }
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| nix::unistd::getuid().to_string());
    let range = |file: &str| {
        subordinate_range(file, &user, nix::unistd::getuid().as_raw())
            .ok_or_else(|| format!("the node's user `{user}` has no range of at least 65536 ids in {file}"))
    };
    let ((uid_start, uid_count), (gid_start, gid_count)) = (range("/etc/subuid")?, range("/etc/subgid")?);
    let unshare = trekker_runtime::sandbox::find_program("unshare")
        .ok_or("`unshare` is not installed (Debian package `util-linux`)")?;
    if trekker_runtime::sandbox::find_program("newuidmap").is_none() {
        return Err("`newuidmap` is not installed (Debian package `uidmap`)".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the node's own binary: {e}"))?;
    let error = std::process::Command::new(unshare)
        .arg("--user")
        .arg("--map-user=0")
        .arg("--map-group=0")
        .arg(format!("--map-users={uid_start},1,{uid_count}"))
        .arg(format!("--map-groups={gid_start},1,{gid_count}"))
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(MARKER, "1")
        .exec();
    Err(format!("cannot enter a user namespace through `unshare`: {error}"))
}

/// `user`'s first range of at least 65536 ids in a subordinate id file.
fn subordinate_range(file: &str, user: &str, uid: u32) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(file).ok()?;
    parse_range(&text, user, uid)
}

fn parse_range(text: &str, user: &str, uid: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let (owner, start, count) = (parts.next()?, parts.next()?, parts.next()?);
        let (start, count) = (start.parse().ok()?, count.parse::<u32>().ok()?);
        ((owner == user || owner == uid.to_string()) && count >= 65_536).then_some((start, count.min(65_536)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_found_by_name_or_uid_and_must_be_large_enough() {
        let file = "alice:100000:65536\ntrekker:200000:131072\nsmall:300000:10\n";
        assert_eq!(parse_range(file, "trekker", 999), Some((200_000, 65_536)));
        assert_eq!(parse_range("999:400000:65536\n", "trekker", 999), Some((400_000, 65_536)));
        assert_eq!(parse_range(file, "small", 5), None);
        assert_eq!(parse_range(file, "bob", 5), None);
    }
}
