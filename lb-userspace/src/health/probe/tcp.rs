//! The `tcp` check, and the connection every other kind starts with.

use std::{io, net::SocketAddr, os::fd::AsRawFd};

use tokio::net::{TcpSocket, TcpStream};

use super::check::Check;

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// This host could not open a socket (descriptors, memory, buffers).
    #[error("socket: {0}")]
    Socket(#[source] io::Error),
    #[error("SO_MARK: {0}")]
    Mark(#[source] io::Error),
    #[error("connect {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// A fault of this host, not an answer of the backend's: no socket, or
    /// a connect refused for want of local resources (descriptors, memory,
    /// buffers, source ports).
    pub fn is_local(&self) -> bool {
        match self {
            ConnectError::Socket(_) | ConnectError::Mark(_) => true,
            ConnectError::Connect { source, .. } => matches!(
                source.raw_os_error(),
                Some(
                    libc::EMFILE
                        | libc::ENFILE
                        | libc::ENOBUFS
                        | libc::ENOMEM
                        | libc::EADDRNOTAVAIL
                )
            ),
        }
    }
}

/// Connect to `addr`, with `SO_MARK` set for a policy-routed (DSR) probe.
pub async fn connect(addr: SocketAddr, mark: Option<u32>) -> Result<TcpStream, ConnectError> {
    let sock = TcpSocket::new_v4().map_err(ConnectError::Socket)?;
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
            return Err(ConnectError::Mark(io::Error::last_os_error()));
        }
    }
    sock.connect(addr)
        .await
        .map_err(|source| ConnectError::Connect { addr, source })
}

/// `kind = "tcp"`: the connection is the check.
pub struct TcpCheck;

impl Check for TcpCheck {
    /// Connected is passed.
    type Error = std::convert::Infallible;

    async fn run(&self, _stream: TcpStream, _peer: SocketAddr) -> Result<(), Self::Error> {
        Ok(())
    }
}
