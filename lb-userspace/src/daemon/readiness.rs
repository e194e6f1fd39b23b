//! What the daemon last knew and told the HA node about its readiness
//! (`ready.rs` decides it). Its own file so the event loop, which holds
//! it, and `ready.rs`, which works on the event loop, do not import each
//! other.

use std::{collections::HashSet, net::Ipv4Addr};

use crate::plan::BackendRef;

/// What readiness the node was last told.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Checked backends that reported since the start.
    pub reported: HashSet<BackendRef>,
    /// `None`: not told yet.
    pub told: Option<bool>,
    /// The kind of reason last logged (a new kind is logged again).
    pub reason: Option<std::mem::Discriminant<NotReady>>,
    /// Whether the main table had a default route when last dumped (the
    /// dump runs once a second at most: a big table is not cheap).
    pub default_route: Option<bool>,
}

/// Why this node could not forward now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NotReady {
    #[error("{count} backend(s) not checked yet, e.g. {example}")]
    Unchecked { count: usize, example: String },
    #[error("neighbour table: {0}")]
    NeighbourTable(String),
    #[error("no route to backend {backend}: {error}")]
    NoRoute { backend: Ipv4Addr, error: String },
    #[error("the next hop {next_hop} of backend {backend} is not resolved")]
    Unresolved {
        backend: Ipv4Addr,
        next_hop: Ipv4Addr,
    },
    #[error("no default route (NAT replies go to any client)")]
    NoDefaultRoute,
}
