//! The daemon's PID file, and signalling the process it names only if that
//! process is an `xdplb run` daemon: a PID file left by a daemon that died
//! may name a PID the kernel has since given to another program.

use std::path::Path;

use anyhow::{Context as _, bail};

/// What `/proc` says about a process.
#[derive(Debug, PartialEq, Eq)]
pub struct Process {
    pub comm: String,
    pub args: Vec<String>,
    pub zombie: bool,
}

pub fn process(pid: i32) -> Option<Process> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next());
    Some(Process {
        comm: comm.trim().to_string(),
        args: cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect(),
        zombie: state == Some('Z'),
    })
}

/// Whether `p` is an `xdplb run` daemon.
pub fn is_daemon(p: &Process) -> bool {
    let exe_is_xdplb = p
        .args
        .first()
        .is_some_and(|a| Path::new(a).file_name().is_some_and(|n| n == "xdplb"));
    (p.comm == "xdplb" || exe_is_xdplb) && p.args.iter().skip(1).any(|a| a == "run")
}

/// The PID the file names, if it is a running xdplb daemon.
pub fn daemon_pid(pid_file: &Path) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("{}: cannot read (is xdplb running?)", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a PID: {:?}", pid_file.display(), text.trim()))?;
    match process(pid) {
        Some(p) if is_daemon(&p) && !p.zombie => Ok(pid),
        Some(p) if is_daemon(&p) => bail!(
            "{}: xdplb (pid {pid}) has exited; remove the stale PID file",
            pid_file.display()
        ),
        Some(p) => bail!(
            "{}: pid {pid} is {:?} ({}), not an xdplb daemon: a stale PID file; not signalling it",
            pid_file.display(),
            p.comm,
            p.args.join(" ")
        ),
        None => bail!(
            "{}: no process {pid}: a stale PID file (xdplb is not running)",
            pid_file.display()
        ),
    }
}

/// Send `sig` to the daemon the PID file names; returns its PID.
pub fn signal(pid_file: &Path, sig: i32, name: &str) -> anyhow::Result<i32> {
    let pid = daemon_pid(pid_file)?;
    // SAFETY: sends a signal to a PID just checked to be an xdplb daemon.
    if unsafe { libc::kill(pid, sig) } != 0 {
        bail!(
            "sending {name} to xdplb (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(pid)
}

/// Whether `pid` still runs (a zombie, exited but not yet reaped by its
/// parent, does not).
pub fn alive(pid: i32) -> bool {
    process(pid).is_some_and(|p| !p.zombie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_xdplb_run_process_counts_as_the_daemon() {
        let p = |comm: &str, args: &[&str]| Process {
            comm: comm.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            zombie: false,
        };
        assert!(is_daemon(&p(
            "xdplb",
            &["/usr/local/bin/xdplb", "run", "--config", "x"]
        )));
        assert!(is_daemon(&p("tokio-runtime-w", &["/usr/bin/xdplb", "run"])));
        assert!(!is_daemon(&p("xdplb", &["xdplb", "status"])));
        assert!(!is_daemon(&p("sleep", &["sleep", "30"])));
        assert!(!is_daemon(&p("bash", &["bash", "-c", "xdplb run"])));
        // This test process is not a daemon either.
        let me = process(std::process::id() as i32).unwrap();
        assert!(!is_daemon(&me), "{me:?}");
    }
}
