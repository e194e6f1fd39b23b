//! Policy routes that send DSR health probes to one backend while they are
//! addressed to the VIP, so a probe proves the backend answers *on the VIP*
//! (the address clients use), not merely on its own address.
//!
//! Backend id `n` gets fwmark `MARK_BASE + n`, a rule `fwmark → table
//! MARK_BASE + n` and in that table one route `VIP/32 via backend`. The probe
//! socket carries the mark (`SO_MARK`). The rule sits after the `local` rule,
//! so this works when the LB host does not own the VIP itself (it routes it).

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleHeader, RuleMessage},
};

use crate::neigh::{NeighError, Netlink};

/// 'XD' in the top half: marks and tables of xdplb's probe routes.
pub const MARK_BASE: u32 = 0x5844_0000;
/// Priority of the probe rules (after `local` at 0, before `main` at 32766).
pub const RULE_PRIORITY: u32 = 1000;

/// One DSR probe route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRoute {
    pub mark: u32,
    pub vip: Ipv4Addr,
    pub backend: Ipv4Addr,
    pub ifindex: u32,
}

impl ProbeRoute {
    pub fn new(backend_id: u32, vip: Ipv4Addr, backend: Ipv4Addr, ifindex: u32) -> Self {
        Self {
            mark: MARK_BASE + backend_id,
            vip,
            backend,
            ifindex,
        }
    }
}

fn rule(mark: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header = RuleHeader {
        family: AddressFamily::Inet,
        action: RuleAction::ToTable,
        ..RuleHeader::default()
    };
    m.attributes.push(RuleAttribute::FwMark(mark));
    m.attributes.push(RuleAttribute::FwMask(u32::MAX));
    m.attributes.push(RuleAttribute::Table(mark));
    m.attributes.push(RuleAttribute::Priority(RULE_PRIORITY));
    m
}

fn route(r: &ProbeRoute) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = RouteHeader {
        address_family: AddressFamily::Inet,
        destination_prefix_length: 32,
        table: RouteHeader::RT_TABLE_UNSPEC,
        protocol: RouteProtocol::Static,
        scope: RouteScope::Universe,
        kind: RouteType::Unicast,
        ..RouteHeader::default()
    };
    m.attributes.push(RouteAttribute::Table(r.mark));
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(r.vip)));
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(r.backend)));
    m.attributes.push(RouteAttribute::Oif(r.ifindex));
    m
}

impl Netlink {
    /// Install (or refresh) the rule and route of one probe route.
    pub fn add_probe_route(&mut self, r: &ProbeRoute) -> Result<(), NeighError> {
        match self.request(
            RouteNetlinkMessage::NewRule(rule(r.mark)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("rule fwmark {:#x}", r.mark),
        ) {
            Ok(_) => {}
            Err(NeighError::Kernel { err, .. }) if err.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        self.request(
            RouteNetlinkMessage::NewRoute(route(r)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &format!("route {}/32 via {} table {:#x}", r.vip, r.backend, r.mark),
        )
        .map(|_| ())
    }

    /// Remove a probe route's rule and route (a missing one is fine).
    pub fn remove_probe_route(&mut self, r: &ProbeRoute) -> Result<(), NeighError> {
        let gone = |e: &NeighError| {
            matches!(e, NeighError::Kernel { err, .. }
                if matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)))
        };
        if let Err(e) = self.request(
            RouteNetlinkMessage::DelRoute(route(r)),
            NLM_F_ACK,
            &format!("delete route {}/32 table {:#x}", r.vip, r.mark),
        ) && !gone(&e)
        {
            return Err(e);
        }
        match self.request(
            RouteNetlinkMessage::DelRule(rule(r.mark)),
            NLM_F_ACK,
            &format!("delete rule fwmark {:#x}", r.mark),
        ) {
            Err(e) if !gone(&e) => Err(e),
            _ => Ok(()),
        }
    }
}
