//! What every kind of active check is: something run over a fresh TCP
//! connection to the target, failing in its own typed ways.

use std::{future::Future, net::SocketAddr};

use tokio::net::TcpStream;

/// One kind of check (`tcp`, `http`, `https`, `mysql`), with its settings.
/// The connection is made for it (and counted as its own failure if it
/// cannot be); the task running it bounds it by the check's timeout.
pub trait Check: Send + Sync {
    /// How this kind finds a backend failing.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Run once over `stream`, connected to `peer`.
    fn run(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}
