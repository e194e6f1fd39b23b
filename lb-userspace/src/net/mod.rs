//! What the daemon asks of the kernel's network stack, over one rtnetlink
//! client (its request/ACK handling is the crate's): routes and the DSR
//! probes' policy rules (`route.rs`), managed neighbour entries
//! (`neigh.rs`), the addresses an HA MASTER owns (`address.rs`); and, on a
//! socket of its own, the change events that invalidate the data path's
//! cached next hops (`watch.rs`).

mod address;
pub mod link;
mod neigh;
mod route;
mod watch;

use std::net::Ipv4Addr;

pub use address::IfAddress;
pub use neigh::{Ensured, NEIGH_PROTOCOL};
pub use route::{PolicyRoute, Route};
use rtnetlink::Handle;
use tokio::task::JoinHandle;
pub use watch::{HopInvalidator, REFRESH as HOP_REFRESH};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("{what}")]
    Request {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no route to {0}")]
    NoRoute(Ipv4Addr),
}

impl NetError {
    /// The kernel's errno for a refused request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

/// The daemon's rtnetlink connection; its I/O runs as a task on the tokio
/// runtime it was opened on, and stops when this is dropped.
pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Netlink {
    /// Open the connection (inside a tokio runtime).
    pub fn open() -> Result<Self, NetError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
        Ok(Self {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    fn request_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
        let what = what.into();
        move |source| NetError::Request { what, source }
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}
