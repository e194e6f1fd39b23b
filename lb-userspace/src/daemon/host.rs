//! What the daemon changes on the host besides its BPF objects, and undoes
//! on a clean stop: managed neighbour entries for backends, and the policy
//! routes of DSR probes (with the `local` rule moved behind them and
//! `accept_local` on their interfaces). One netlink client for all of it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use tracing::{info, warn};

use crate::{
    config::{Config, ForwardingKind},
    control::CheckTarget,
    health::{dsr_route, probe::Target},
    net::{Ensured, NetError, Netlink, PolicyRoute, Route},
};

/// A backend's next hop with a managed neighbour entry.
struct Managed {
    backend: Ipv4Addr,
    route: Route,
    /// The entry is ours (created by xdplb): released on a clean stop.
    ours: bool,
}

pub struct Host {
    nl: Netlink,
    managed: Vec<Managed>,
    probe_routes: Vec<PolicyRoute>,
    /// The `local` rule is at `dsr_route::LOCAL_RULE_PRIORITY`.
    local_rule_moved: bool,
    /// Interfaces whose `accept_local` we set, with the value before.
    accept_local: Vec<(String, String)>,
}

/// `/proc/sys/net/ipv4/conf/<iface>/<key>`.
fn conf_path(iface: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{iface}/{key}")
}

fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

impl Host {
    pub fn open() -> Result<Self, NetError> {
        Ok(Self {
            nl: Netlink::open()?,
            managed: Vec::new(),
            probe_routes: Vec::new(),
            local_rule_moved: false,
            accept_local: Vec::new(),
        })
    }

    /// The host's netlink client (for read-only questions).
    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Keep every backend's next hop resolved (when the config asks for it):
    /// a managed entry for each new one, entries of backends that left
    /// released (ours only, and only if no other backend still uses them).
    pub async fn sync_neighbours(&mut self, config: &Config) {
        let mut wanted: Vec<Ipv4Addr> = config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.address))
            .collect();
        wanted.sort();
        wanted.dedup();
        if !config.dataplane.manage_neighbours {
            wanted.clear();
        }
        for addr in wanted.iter().copied() {
            if self.managed.iter().any(|m| m.backend == addr) {
                continue;
            }
            let result = match self.nl.route_to(addr).await {
                Ok(route) => self
                    .nl
                    .ensure_managed(route.ifindex, route.next_hop)
                    .await
                    .map(|e| (route, e)),
                Err(e) => Err(e),
            };
            match result {
                Ok((route, Ensured::Created | Ensured::Replaced | Ensured::Ours)) => {
                    info!(backend = %addr, next_hop = %route.next_hop, ifindex = route.ifindex, "managed neighbour entry in place");
                    self.managed.push(Managed {
                        backend: addr,
                        route,
                        ours: true,
                    });
                }
                Ok((route, Ensured::Theirs(what))) => {
                    info!(backend = %addr, next_hop = %route.next_hop, existing = %what, "neighbour entry exists and is not xdplb's; left as it is");
                    self.managed.push(Managed {
                        backend: addr,
                        route,
                        ours: false,
                    });
                }
                Err(e) => {
                    warn!(backend = %addr, error = %e, "cannot keep the backend's neighbour resolved; its packets go through the kernel's neighbour resolution until it is")
                }
            }
        }
        let (keep, gone): (Vec<_>, Vec<_>) = self
            .managed
            .drain(..)
            .partition(|m| wanted.contains(&m.backend));
        self.managed = keep;
        for m in gone {
            if m.ours && !self.managed.iter().any(|k| k.route == m.route) {
                self.release(m.route).await;
            }
        }
    }

    /// Re-make the managed entries the kernel dropped since (a link going
    /// down flushes them all, a flap of the backend's link included) or that
    /// a learned entry took the place of; take over entries someone else
    /// had when they become learned ones. Called every second: one dump of
    /// the neighbour table, and netlink requests only for what is missing.
    pub async fn keep_neighbours(&mut self) {
        if self.managed.is_empty() {
            return;
        }
        let table = match self.nl.neighbour_table().await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "neighbour table");
                return;
            }
        };
        for m in self.managed.iter_mut() {
            let fine = match table.get(&(m.route.ifindex, m.route.next_hop)) {
                Some(n) => n.is_ours() || (!m.ours && !n.is_learned()),
                None => false,
            };
            if fine {
                continue;
            }
            // The route may have changed with the link: look it up again.
            let route = match self.nl.route_to(m.backend).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(backend = %m.backend, error = %e, "no route to the backend (yet)");
                    continue;
                }
            };
            match self.nl.ensure_managed(route.ifindex, route.next_hop).await {
                Ok(Ensured::Theirs(_)) => {}
                Ok(e) => {
                    info!(backend = %m.backend, next_hop = %route.next_hop, ifindex = route.ifindex, how = ?e, "managed neighbour entry made again (the kernel had dropped or replaced it)");
                    m.route = route;
                    m.ours = true;
                }
                Err(e) => {
                    warn!(backend = %m.backend, error = %e, "cannot make the backend's neighbour entry again")
                }
            }
        }
    }

    async fn release(&self, route: Route) {
        if let Err(e) = self.nl.release_managed(route.ifindex, route.next_hop).await {
            warn!(next_hop = %route.next_hop, error = %e, "removing managed neighbour entry failed");
        }
    }

    /// Where each checked backend is probed: NAT backends on their own
    /// address; DSR backends on the VIP, policy-routed to them (falling back
    /// to their own address, with a warning, if the route cannot be made).
    /// Routes of backends no longer probed are removed.
    pub async fn probe_targets(&mut self, targets: Vec<CheckTarget>) -> Vec<Target> {
        let mut routes = Vec::new();
        let mut out = Vec::new();
        for t in targets {
            let (addr, port) = (t.backend.addr, t.backend.port);
            let check_port = t.check.port.unwrap_or(port);
            let (connect, mark) = match t.forwarding {
                ForwardingKind::Nat => (SocketAddrV4::new(addr, check_port), None),
                ForwardingKind::Dsr => match self.route_dsr_probe(&t).await {
                    Ok(r) => {
                        routes.push(r);
                        (SocketAddrV4::new(t.vip, check_port), Some(r.mark))
                    }
                    Err(e) => {
                        warn!(service = %t.service, backend = %addr, error = %e, "cannot route the DSR probe to the VIP on this backend; probing its own address instead");
                        (SocketAddrV4::new(addr, check_port), None)
                    }
                },
            };
            out.push(Target {
                backend: t.backend,
                connect: SocketAddr::V4(connect),
                mark,
                spec: t.check,
            });
        }
        for old in std::mem::take(&mut self.probe_routes) {
            if !routes.iter().any(|r| r.mark == old.mark)
                && let Err(e) = self.nl.remove_policy_route(&old).await
            {
                warn!(error = %e, "removing a probe route failed");
            }
        }
        if !routes.is_empty() && !self.local_rule_moved {
            match self
                .nl
                .move_local_rule(dsr_route::LOCAL_RULE_PRIORITY)
                .await
            {
                Ok(()) => {
                    info!(
                        priority = dsr_route::LOCAL_RULE_PRIORITY,
                        "moved the local routing rule behind the DSR probe rules (restored on stop)"
                    );
                    self.local_rule_moved = true;
                }
                Err(e) => {
                    warn!(error = %e, "cannot move the local routing rule: DSR probes of a VIP this host owns (HA MASTER) reach this host")
                }
            }
        }
        for r in &routes {
            self.accept_local_on(r.ifindex);
        }
        self.probe_routes = routes;
        out
    }

    /// Probe answers come from the VIP, which an HA MASTER owns: the
    /// interface they arrive on must accept a local source address.
    fn accept_local_on(&mut self, ifindex: u32) {
        let Some(iface) = ifname(ifindex) else {
            return;
        };
        if self.accept_local.iter().any(|(i, _)| *i == iface) {
            return;
        }
        let path = conf_path(&iface, "accept_local");
        let before = std::fs::read_to_string(&path).unwrap_or_default();
        let before = before.trim().to_string();
        if before != "1"
            && let Err(e) = std::fs::write(&path, "1")
        {
            warn!(%iface, error = %e, "cannot set accept_local: DSR probe answers from a local VIP will be dropped");
            return;
        }
        let strict = |p: String| std::fs::read_to_string(p).is_ok_and(|v| v.trim() == "1");
        if strict(conf_path(&iface, "rp_filter")) || strict(conf_path("all", "rp_filter")) {
            warn!(%iface, "strict rp_filter: DSR probe answers from a VIP this host owns will be dropped; use loose (2)");
        }
        self.accept_local.push((iface, before));
    }

    async fn route_dsr_probe(&self, t: &CheckTarget) -> Result<PolicyRoute, NetError> {
        let route = self.nl.route_to(t.backend.addr).await?;
        let r = dsr_route::probe_route(t.backend_id, t.vip, t.backend.addr, route.ifindex);
        self.nl.add_policy_route(&r).await?;
        Ok(r)
    }

    /// Clean stop: remove probe routes and release our neighbour entries.
    pub async fn release_all(&mut self) {
        for r in std::mem::take(&mut self.probe_routes) {
            if let Err(e) = self.nl.remove_policy_route(&r).await {
                warn!(error = %e, "removing a probe route failed");
            }
        }
        if std::mem::take(&mut self.local_rule_moved)
            && let Err(e) = self
                .nl
                .restore_local_rule(dsr_route::LOCAL_RULE_PRIORITY)
                .await
        {
            warn!(error = %e, "restoring the local routing rule failed");
        }
        for (iface, before) in std::mem::take(&mut self.accept_local) {
            if before != "1" && !before.is_empty() {
                let _ = std::fs::write(conf_path(&iface, "accept_local"), before);
            }
        }
        let mut routes: Vec<Route> = self
            .managed
            .drain(..)
            .filter(|m| m.ours)
            .map(|m| m.route)
            .collect();
        routes.sort_by_key(|r| (r.ifindex, r.next_hop));
        routes.dedup();
        for r in routes {
            self.release(r).await;
        }
    }
}
