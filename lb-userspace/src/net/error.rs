//! What a netlink request can fail with.

use std::net::Ipv4Addr;

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
