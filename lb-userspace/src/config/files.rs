//! Files the config names whose owner and mode matter: a secret must be
//! private to its owner, and a program the daemon runs as root must be
//! changeable by root only (keepalived's `script_security`).

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

/// Who may own such a file: root, or the user the daemon runs as.
fn trusted_owner(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

/// A secret (the HA key): a regular file, owned by root (or the daemon's
/// user), with no access for group or others.
pub(super) fn private(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    if !trusted_owner(meta.uid()) {
        return Err(format!(
            "{} is owned by uid {}, not root: chown root it",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is accessible by group or others (mode {mode:o}); chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

/// A program run as root (the HA notify command): a regular executable
/// file that it and every directory above it is owned by root (or the
/// daemon's user) and not writable by group or others, so nobody else can
/// put their own program in its place.
pub(super) fn trusted_program(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", path.display()));
    }
    let mut at = Some(path);
    while let Some(p) = at {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if !trusted_owner(m.uid()) {
            return Err(format!(
                "{} is owned by uid {}, not root: another user could change what runs as root",
                p.display(),
                m.uid()
            ));
        }
        // A sticky directory (/tmp) still lets others add files, but not
        // replace this one: only group/world-writable without sticky is out.
        let mode = m.permissions().mode();
        if mode & 0o022 != 0 && !(m.is_dir() && mode & 0o1000 != 0) {
            return Err(format!(
                "{} is writable by group or others (mode {:o}): another user could change what runs as root",
                p.display(),
                mode & 0o7777
            ));
        }
        at = p.parent().filter(|q| !q.as_os_str().is_empty());
    }
    Ok(())
}
