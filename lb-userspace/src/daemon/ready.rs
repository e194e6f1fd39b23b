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

use std::net::Ipv4Addr;

use super::{event_loop::Daemon, readiness::NotReady};
use crate::{config::ForwardingKind, ha::Command};

impl Daemon {
    /// Why this node could not forward now, or `Ok`. `fresh`: dump the
    /// routing table again for the default route.
    async fn not_ready(&mut self, fresh: bool) -> Result<(), NotReady> {
        let silent: Vec<String> = self
            .control
            .check_targets()
            .iter()
            .filter(|t| !self.readiness.reported.contains(&t.backend))
            .map(|t| t.backend.to_string())
            .collect();
        if !silent.is_empty() {
            return Err(NotReady::Unchecked {
                count: silent.len(),
                example: silent[0].clone(),
            });
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
            .map_err(|e| NotReady::NeighbourTable(e.to_string()))?;
        for b in backends {
            let route = nl.route_to(b).await.map_err(|e| NotReady::NoRoute {
                backend: b,
                error: e.to_string(),
            })?;
            let resolved = table
                .get(&(route.ifindex, route.next_hop))
                .is_some_and(|n| n.is_resolved());
            if !resolved {
                return Err(NotReady::Unresolved {
                    backend: b,
                    next_hop: route.next_hop,
                });
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
                return Err(NotReady::NoDefaultRoute);
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
        let reason = why.as_ref().err().map(std::mem::discriminant);
        // Logged when readiness or the kind of reason changes: an operator
        // waiting for a node to take MASTER back sees what it waits for
        // now, not only what it waited for first (and not a line per
        // backend as thousands report).
        if self.readiness.told != Some(ready) || self.readiness.reason != reason {
            match &why {
                Ok(()) => {
                    tracing::info!("ready to forward: may take MASTER back from a lower peer")
                }
                Err(w) => {
                    tracing::info!(why = %w, "not ready to forward: will not take MASTER from a lower peer")
                }
            }
            self.readiness.reason = reason;
        }
        if self.readiness.told != Some(ready) {
            if let Some(node) = &self.ha {
                node.send(Command::Ready(ready));
            }
            self.readiness.told = Some(ready);
        }
    }
}
