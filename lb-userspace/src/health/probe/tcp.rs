//! The `tcp` check, and the connection every other kind starts with.

use std::{net::SocketAddr, os::fd::AsRawFd};

use tokio::net::{TcpSocket, TcpStream};

/// Connect to `addr`, with `SO_MARK` set for a policy-routed (DSR) probe.
pub async fn connect(addr: SocketAddr, mark: Option<u32>) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(mark) = mark {
        // SAFETY: setsockopt on a socket we own with a correctly sized value.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&mark as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("SO_MARK: {}", std::io::Error::last_os_error()));
        }
    }
    sock.connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}
