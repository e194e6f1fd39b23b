//! What the daemon asks of the kernel's network stack, over one rtnetlink
//! client (its request/ACK handling is the crate's): routes and the DSR
//! probes' policy rules (`route.rs`), managed neighbour entries
//! (`neigh.rs`), the addresses an HA MASTER owns (`address.rs`); and, on a
//! socket of its own, the change events that invalidate the data path's
//! cached next hops (`watch.rs`).

mod address;
mod client;
mod error;
pub mod link;
mod neigh;
mod route;
mod watch;

pub use address::IfAddress;
pub use client::Netlink;
pub use error::NetError;
pub use neigh::{Ensured, NEIGH_PROTOCOL};
pub use route::{PolicyRoute, Route};
pub use watch::HopInvalidator;
