//! The command-line tools that talk to a running daemon: `reload` and `stop`
//! signal the PID in its PID file (`pid.rs`, which refuses a stale file
//! whose PID now belongs to another program), `status` reads its status
//! socket.

pub mod pid;

use std::{io::Read as _, path::Path, time::Duration};

use anyhow::Context as _;

/// `xdplb status`: the table the daemon writes on its status socket.
pub fn status(socket: &Path) -> anyhow::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("{}: cannot connect (is xdplb running?)", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .with_context(|| format!("reading {}", socket.display()))?;
    Ok(out)
}
