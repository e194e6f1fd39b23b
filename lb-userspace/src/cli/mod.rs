//! The command-line tools that talk to a running daemon: `stop` signals
//! the PID in its PID file (`pid.rs`, which refuses a stale file whose PID
//! now belongs to another program); `reload`, `status`, `drain` and `deny`
//! send a request line on its status socket and print the answer (`reload`
//! waits for the daemon's verdict and fails with it).

pub mod pid;

use std::{
    io::{Read as _, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;

/// `xdplb status`: the table the daemon writes on its status socket.
pub fn status(socket: &Path) -> anyhow::Result<String> {
    request(socket, "status")
}

/// `xdplb reload`: the daemon re-reads its config and answers with its
/// verdict (what changed, or why the file was rejected: an error).
pub fn reload(socket: &Path) -> anyhow::Result<String> {
    // Applying a large config (neighbours, probes) may take a while.
    request_within(socket, "reload", Duration::from_secs(60))
}

/// Send one request line, return the daemon's answer; an answer starting
/// with "error: " is an error.
pub fn request(socket: &Path, line: &str) -> anyhow::Result<String> {
    request_within(socket, line, Duration::from_secs(5))
}

/// [`request`], waiting up to `timeout` for the answer.
fn request_within(socket: &Path, line: &str, timeout: Duration) -> anyhow::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("{}: cannot connect (is xdplb running?)", socket.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("{line}\n").as_bytes())
        .with_context(|| format!("writing to {}", socket.display()))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("reading {}", socket.display()))?;
    if let Some(e) = out.strip_prefix("error: ") {
        anyhow::bail!("{}", e.trim_end());
    }
    Ok(out)
}
