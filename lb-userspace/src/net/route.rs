//! Routes: where the kernel sends a destination (for managed neighbour
//! entries), and policy routes (an fwmark rule and a one-route table) that
//! send marked packets to a chosen gateway; VIP routes for the routing
//! daemon to announce (`[cluster]`).

use std::{collections::BTreeSet, net::Ipv4Addr};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType},
        rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
    },
};

use super::{client::Netlink, error::NetError};

/// Where the kernel sends packets for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub ifindex: u32,
    /// The neighbour to resolve: the gateway, or the destination itself.
    pub next_hop: Ipv4Addr,
}

/// Packets with fwmark `mark` are routed by table `table`, which holds one
/// route: `dst/32 via gateway dev ifindex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyRoute {
    pub mark: u32,
    pub table: u32,
    pub priority: u32,
    pub dst: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub ifindex: u32,
}

impl PolicyRoute {
    fn rule(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header = RuleHeader {
            family: AddressFamily::Inet,
            action: RuleAction::ToTable,
            ..RuleHeader::default()
        };
        m.attributes.push(RuleAttribute::FwMark(self.mark));
        m.attributes.push(RuleAttribute::FwMask(u32::MAX));
        m.attributes.push(RuleAttribute::Table(self.table));
        m.attributes.push(RuleAttribute::Priority(self.priority));
        m
    }

    fn route(&self) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(self.dst, 32)
            .gateway(self.gateway)
            .output_interface(self.ifindex)
            .table_id(self.table)
            .build()
    }
}

impl Netlink {
    /// The kernel's route to `dst` (a FIB lookup, as `ip route get`).
    pub async fn route_to(&self, dst: Ipv4Addr) -> Result<Route, NetError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let mut replies = self.handle.route().get(query).execute();
        while let Some(r) = replies
            .try_next()
            .await
            .map_err(Self::request_error(format!("route to {dst}")))?
        {
            let mut ifindex = None;
            let mut gateway = None;
            for a in r.attributes {
                match a {
                    RouteAttribute::Oif(i) => ifindex = Some(i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(g),
                    _ => {}
                }
            }
            if let Some(ifindex) = ifindex {
                return Ok(Route {
                    ifindex,
                    next_hop: gateway.unwrap_or(dst),
                });
            }
        }
        Err(NetError::NoRoute(dst))
    }

    /// Whether the main table has an IPv4 default route.
    pub async fn has_default_route(&self) -> Result<bool, NetError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut dump = self.handle.route().get(query).execute();
        while let Some(r) = dump
            .try_next()
            .await
            .map_err(Self::request_error("list routes"))?
        {
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if r.header.destination_prefix_length == 0 && table == 254 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Install (or refresh) a policy route.
    pub async fn add_policy_route(&self, r: &PolicyRoute) -> Result<(), NetError> {
        let mut rule = self.handle.rule().add();
        *rule.message_mut() = r.rule();
        match rule
            .execute()
            .await
            .map_err(Self::request_error(format!("rule fwmark {:#x}", r.mark)))
        {
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            other => other?,
        }
        self.handle
            .route()
            .add(r.route())
            .replace()
            .execute()
            .await
            .map_err(Self::request_error(format!(
                "route {}/32 via {} table {:#x}",
                r.dst, r.gateway, r.table
            )))
    }

    /// Remove a policy route (one already gone is fine).
    pub async fn remove_policy_route(&self, r: &PolicyRoute) -> Result<(), NetError> {
        let gone = |e: &NetError| matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ESRCH));
        if let Err(e) =
            self.handle
                .route()
                .del(r.route())
                .execute()
                .await
                .map_err(Self::request_error(format!(
                    "delete route {}/32 table {:#x}",
                    r.dst, r.table
                )))
            && !gone(&e)
        {
            return Err(e);
        }
        match self
            .handle
            .rule()
            .del(r.rule())
            .execute()
            .await
            .map_err(Self::request_error(format!(
                "delete rule fwmark {:#x}",
                r.mark
            ))) {
            Err(e) if !gone(&e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Move the IPv4 `local` rule from priority 0 to `to`, so rules before
    /// it (DSR probe routes) can send a local address elsewhere. Adds the
    /// new rule before removing the old, so local delivery never stops.
    /// Already moved (no rule at 0) is fine.
    pub async fn move_local_rule(&self, to: u32) -> Result<(), NetError> {
        self.add_rule(local_rule(to), "add local rule").await?;
        self.del_rule(local_rule(0), "move local rule").await
    }

    /// Undo [`Self::move_local_rule`].
    pub async fn restore_local_rule(&self, from: u32) -> Result<(), NetError> {
        self.add_rule(local_rule(0), "restore local rule").await?;
        self.del_rule(local_rule(from), "remove moved local rule")
            .await
    }

    async fn add_rule(&self, m: RuleMessage, what: &str) -> Result<(), NetError> {
        let mut rule = self.handle.rule().add();
        *rule.message_mut() = m;
        match rule
            .execute()
            .await
            .map_err(Self::request_error(what.to_string()))
        {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    async fn del_rule(&self, m: RuleMessage, what: &str) -> Result<(), NetError> {
        match self
            .handle
            .rule()
            .del(m)
            .execute()
            .await
            .map_err(Self::request_error(what.to_string()))
        {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
            other => other,
        }
    }
}

/// The kernel's `local` routing table.
const RT_TABLE_LOCAL: u32 = 255;

/// `from all lookup local pref <priority>`.
fn local_rule(priority: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header = RuleHeader {
        family: AddressFamily::Inet,
        action: RuleAction::ToTable,
        table: RT_TABLE_LOCAL as u8,
        ..RuleHeader::default()
    };
    m.attributes.push(RuleAttribute::Table(RT_TABLE_LOCAL));
    m.attributes.push(RuleAttribute::Priority(priority));
    m
}

/// A VIP announced through the routing daemon: a blackhole /32 in the
/// announce table, carrying the daemon's protocol number (`[cluster]`).
fn announce_route(vip: Ipv4Addr, table: u32, protocol: u8) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(vip, 32)
        .table_id(table)
        .protocol(RouteProtocol::Other(protocol))
        .kind(RouteType::BlackHole)
        .build()
}

impl Netlink {
    /// The VIPs announced now: /32 routes of `protocol` in `table`.
    pub async fn announced(
        &self,
        table: u32,
        protocol: u8,
    ) -> Result<BTreeSet<Ipv4Addr>, NetError> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut dump = self.handle.route().get(query).execute();
        let mut found = BTreeSet::new();
        while let Some(r) = dump
            .try_next()
            .await
            .map_err(Self::request_error(format!("list routes of table {table}")))?
        {
            let in_table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            if in_table != table
                || r.header.protocol != RouteProtocol::Other(protocol)
                || r.header.destination_prefix_length != 32
            {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Destination(RouteAddress::Inet(d)) = a {
                    found.insert(*d);
                }
            }
        }
        Ok(found)
    }

    /// Announce `vip` (an existing route is replaced).
    pub async fn announce(&self, vip: Ipv4Addr, table: u32, protocol: u8) -> Result<(), NetError> {
        self.handle
            .route()
            .add(announce_route(vip, table, protocol))
            .replace()
            .execute()
            .await
            .map_err(Self::request_error(format!(
                "route blackhole {vip}/32 table {table}"
            )))
    }

    /// Withdraw `vip` (one not announced is fine).
    pub async fn withdraw(&self, vip: Ipv4Addr, table: u32, protocol: u8) -> Result<(), NetError> {
        match self
            .handle
            .route()
            .del(announce_route(vip, table, protocol))
            .execute()
            .await
            .map_err(Self::request_error(format!(
                "delete route {vip}/32 table {table}"
            ))) {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ESRCH)) => Ok(()),
            other => other,
        }
    }
}
