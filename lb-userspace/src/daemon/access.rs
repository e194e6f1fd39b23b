//! Who may use the status socket: root, the daemon's own user, and members
//! of `control.status_socket_group` if one is set. The socket file is 0600
//! (0660 and that group's, with one), and every connection's peer is
//! checked (`SO_PEERCRED`), so a mode loosened later still lets nobody else
//! in.

use std::{ffi::CString, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, bail};

/// The group allowed besides root and the daemon's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub group: Option<u32>,
}

/// The gid of group `name`.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = CString::new(name).context("control.status_socket_group: not a group name")?;
    // SAFETY: getgrnam returns a pointer into static storage or null; the
    // daemon reads it at once, before any other thread looks groups up.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        bail!("control.status_socket_group: no group {name:?} on this host");
    }
    // SAFETY: non-null pointer to a group entry.
    Ok(unsafe { (*g).gr_gid })
}

/// Give the socket file its owner-only mode, or its group's.
pub fn protect_socket(path: &Path, policy: Policy) -> anyhow::Result<()> {
    let mode = match policy.group {
        Some(gid) => {
            let c = CString::new(path.as_os_str().as_encoded_bytes())?;
            // SAFETY: a NUL-terminated path; -1 keeps the owner.
            if unsafe { libc::chown(c.as_ptr(), u32::MAX, gid) } != 0 {
                bail!(
                    "control.status_socket: giving {} to group {gid}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("control.status_socket: chmod {mode:o} {}", path.display()))
}

/// Whether a peer with these credentials may send requests.
pub fn allowed(policy: Policy, uid: u32, gid: u32, pid: Option<i32>) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if uid == 0 || uid == me {
        return true;
    }
    let Some(group) = policy.group else {
        return false;
    };
    gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
}

/// The supplementary groups of process `pid` (`Groups:` in its status).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_self_always_others_by_group() {
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        let none = Policy { group: None };
        assert!(allowed(none, 0, 0, None));
        assert!(allowed(none, me, 12345, None));
        let stranger = if me == 65534 { 65533 } else { 65534 };
        assert!(!allowed(none, stranger, 65534, None));
        let g = Policy { group: Some(4242) };
        assert!(allowed(g, stranger, 4242, None), "primary group");
        assert!(!allowed(g, stranger, 65534, None));
        // Supplementary groups come from the peer's /proc status: this
        // process's own are whatever they are, so a group it is not in is
        // not found.
        assert!(!allowed(
            g,
            stranger,
            65534,
            Some(std::process::id() as i32)
        ));
    }
}
