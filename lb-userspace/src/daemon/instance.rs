//! One daemon per data path: a second `xdplb run` on the same pin path or
//! the same PID file refuses to start, before it touches anything, instead
//! of adopting the live pins and later unpinning them under the first. The
//! locks are `flock`s (the kernel drops them with the process, so a
//! SIGKILLed daemon's successor is never locked out): on the pin root
//! directory itself (bpffs holds no plain files) and on the PID file. A
//! status socket another daemon answers on is never unlinked.

use std::{
    fs::File,
    io::{Seek as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The locks a running daemon holds; dropped (unlocked) when it ends.
pub struct Instance {
    _pin_root: Option<File>,
    pid_file: File,
    pid_path: PathBuf,
}

/// Files the daemon creates are its own: the socket, PID file, HA state and
/// the run-time deny list are created 0600 (the socket's group, if
/// configured, is given back explicitly), whatever umask it was started
/// with.
pub fn private_umask() {
    // SAFETY: umask has no failure mode.
    unsafe { libc::umask(0o077) };
}

/// Raise the soft limit on open descriptors to the hard one (the shipped
/// unit sets the hard one with `LimitNOFILE`): every probe holds a socket,
/// and running out of descriptors must not be what a busy daemon meets.
/// Returns the soft limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: a valid rlimit no larger than the hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    r.rlim_cur
}

/// Take the pin root's and the PID file's locks, or say who holds them.
pub fn claim(pin_root: Option<&Path>, pid_path: &Path) -> anyhow::Result<Instance> {
    let pin_root = match pin_root {
        Some(root) => {
            std::fs::create_dir_all(root)
                .with_context(|| format!("dataplane.pin_path: creating {}", root.display()))?;
            let dir = File::open(root)
                .with_context(|| format!("dataplane.pin_path: opening {}", root.display()))?;
            if !lock(&dir) {
                bail!(
                    "another xdplb daemon{} holds the data path pinned at {}; stop it first (`xdplb stop`, or `xdplb stop --keep-running` for a hitless restart)",
                    holder(&dir).map_or(String::new(), |p| format!(" (pid {p})")),
                    root.display()
                );
            }
            Some(dir)
        }
        None => None,
    };
    let pid_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(pid_path)
        .with_context(|| format!("PID file {}", pid_path.display()))?;
    if !lock(&pid_file) {
        bail!(
            "another xdplb daemon{} holds the PID file {}",
            holder(&pid_file).map_or(String::new(), |p| format!(" (pid {p})")),
            pid_path.display()
        );
    }
    Ok(Instance {
        _pin_root: pin_root,
        pid_file,
        pid_path: pid_path.to_path_buf(),
    })
}

impl Instance {
    /// Write this process's PID into the locked PID file (once it is
    /// ready: `xdplb reload` and `stop` find it there).
    pub fn write_pid(&mut self) -> std::io::Result<()> {
        self.pid_file.set_len(0)?;
        self.pid_file.rewind()?;
        writeln!(self.pid_file, "{}", std::process::id())
    }

    pub fn pid_path(&self) -> &Path {
        &self.pid_path
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: whether this process now holds it.
fn lock(f: &File) -> bool {
    // SAFETY: a valid descriptor; flock has no memory effects.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The PID holding an flock on `f`, from `/proc/locks` (by device and
/// inode), if it can be told.
fn holder(f: &File) -> Option<u32> {
    let meta = f.metadata().ok()?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 1234 00:2b:5678 0 EOF"
    locks.lines().find_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.get(1) != Some(&"FLOCK") {
            return None;
        }
        let mut id = w.get(5)?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let i: u64 = id.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino)
            .then(|| w.get(4)?.parse().ok())
            .flatten()
    })
}

/// Make `path` free for the status socket: a socket a daemon still answers
/// on is refused (never unlinked); a stale one (nobody listening) or a
/// leftover file of ours is removed.
pub fn free_socket_path(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt as _;
    if !meta.file_type().is_socket() {
        bail!(
            "control.status_socket: {} exists and is not a socket; not removing it",
            path.display()
        );
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "control.status_socket: a daemon is answering on {}; is another xdplb running?",
            path.display()
        );
    }
    std::fs::remove_file(path)
        .with_context(|| format!("control.status_socket: removing stale {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xdplb-instance-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A second claim of the same pin root or PID file is refused and names
    /// the holder; once the first is dropped, the claim succeeds.
    #[test]
    fn one_daemon_per_pin_root_and_pid_file() {
        let d = dir("claim");
        let (root, pid) = (d.join("pins"), d.join("xdplb.pid"));
        let first = claim(Some(&root), &pid).unwrap();
        let e = claim(Some(&root), &d.join("other.pid"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("holds the data path pinned"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        let e = claim(None, &pid).err().unwrap().to_string();
        assert!(e.contains("holds the PID file"), "{e}");
        drop(first);
        let mut again = claim(Some(&root), &pid).unwrap();
        again.write_pid().unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid).unwrap(),
            format!("{}\n", std::process::id())
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A live socket is never unlinked; a stale one is; a file that is not
    /// a socket is left alone.
    #[test]
    fn a_live_status_socket_is_kept() {
        let d = dir("socket");
        let path = d.join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let e = free_socket_path(&path).err().unwrap().to_string();
        assert!(e.contains("a daemon is answering"), "{e}");
        assert!(path.exists());
        drop(live);
        free_socket_path(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, "not a socket").unwrap();
        assert!(free_socket_path(&path).is_err());
        assert!(path.exists());
        let _ = std::fs::remove_dir_all(&d);
    }
}
