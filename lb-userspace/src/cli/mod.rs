//! The command-line tools that talk to a running daemon: `reload` and `stop`
//! signal the PID in its PID file (`pid.rs`, which refuses a stale file
//! whose PID now belongs to another program), `status`, `drain` and `deny`
//! send a request line on its status socket and print the answer.

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

/// Send one request line, return the daemon's answer; an answer starting
/// with "error: " is an error.
pub fn request(socket: &Path, line: &str) -> anyhow::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("{}: cannot connect (is xdplb running?)", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
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
