//! Whether this node could forward now, were it MASTER: what an HA node
//! waits for before it takes MASTER back from a lower peer (issue 20: a
//! node that came back without its default route preempted at once and
//! dropped a thousand packets). Ready means
//!
//! - every checked backend has reported at least once since the start (a
//!   dead backend is known for what it is);
//! - every backend has a route and its next hop a resolved neighbour
//!   entry (the data path finds its MAC);
//! - with NAT services, a default route (their replies go to any client).
//!
//! Looked at every second while the node is not MASTER.

use std::{collections::HashSet, net::Ipv4Addr};

use super::event_loop::Daemon;
use crate::{config::ForwardingKind, ha::Command, plan::BackendRef};

/// What readiness the node was last told.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Checked backends that reported since the start.
    pub reported: HashSet<BackendRef>,
    /// `None`: not told yet.
    pub told: Option<bool>,
    /// Whether the main table had a default route when last dumped (the
    /// dump runs once a second at most: a big table is not cheap).
    pub default_route: Option<bool>,
}

impl Daemon {
    /// Why this node could not forward now, or `Ok`. `fresh`: dump the
    /// routing table again for the default route.
    async fn not_ready(&mut self, fresh: bool) -> Result<(), String> {
        let silent: Vec<String> = self
            .control
            .check_targets()
            .iter()
            .filter(|t| !self.readiness.reported.contains(&t.backend))
            .map(|t| t.backend.to_string())
            .collect();
        if !silent.is_empty() {
            return Err(format!(
                "{} backend(s) not checked yet, e.g. {}",
                silent.len(),
                silent[0]
            ));
        }
        let config = self.control.config();
        let mut backends: Vec<Ipv4Addr> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        backends.sort();
        backends.dedup();
        let nl = self.host.netlink();
        let table = nl
            .neighbour_table()
            .await
            .map_err(|e| format!("neighbour table: {e}"))?;
        for b in backends {
            let route = nl
                .route_to(b)
                .await
                .map_err(|e| format!("no route to backend {b}: {e}"))?;
            let resolved = table
                .get(&(route.ifindex, route.next_hop))
                .is_some_and(|n| n.is_resolved());
            if !resolved {
                return Err(format!(
                    "the next hop {} of backend {b} is not resolved",
                    route.next_hop
                ));
            }
        }
        let nat = config
            .services
            .iter()
            .any(|s| s.forwarding == ForwardingKind::Nat);
        if nat {
            if fresh || self.readiness.default_route.is_none() {
                self.readiness.default_route = Some(
                    self.host
                        .netlink()
                        .has_default_route()
                        .await
                        .unwrap_or(false),
                );
            }
            if self.readiness.default_route != Some(true) {
                return Err("no default route (NAT replies go to any client)".into());
            }
        }
        Ok(())
    }

    /// Tell the HA node whether this node is ready, when that changed.
    /// `fresh`: look at the routing table again (once a second).
    pub async fn tell_readiness(&mut self, fresh: bool) {
        let Some(node) = &self.ha else {
            return;
        };
        if node.status().state == crate::ha::State::Master && self.readiness.told == Some(true) {
            return;
        }
        let why = self.not_ready(fresh).await;
        let ready = why.is_ok();
        if self.readiness.told != Some(ready) {
            match &why {
                Ok(()) => {
                    tracing::info!("ready to forward: may take MASTER back from a lower peer")
                }
                Err(w) => {
                    tracing::info!(why = %w, "not ready to forward: will not take MASTER from a lower peer")
                }
            }
            if let Some(node) = &self.ha {
                node.send(Command::Ready(ready));
            }
            self.readiness.told = Some(ready);
        }
    }
}
