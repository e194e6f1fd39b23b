//! xdplb data path: an XDP program that load-balances IPv4 TCP/UDP services.
//!
//! Per packet: parse Ethernet/IPv4/L4 (`parse`), look up the service by
//! (VIP, port, protocol), find or create the flow's backend (`sched`),
//! rewrite (`nat` or MAC-only for DSR) and forward to the next hop the
//! kernel's FIB names (`forward`). Backend replies of NAT flows are
//! translated back to the VIP. Every verdict is counted under a `Reason`.
#![no_std]
#![no_main]
// `atomic_xadd`: least_conn's connection counters (see `maps::add_conns`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod backend_tuple;
mod cookie;
mod fault;
mod forward;
mod icmp;
mod l2;
mod maps;
mod nat;
mod neigh;
mod parse;
mod rate;
mod relay;
mod reply_owner;
mod sched;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    ACL_DENY, COOKIE_F_ON, COOKIE_F_PENDING, FILTER_BACKENDS, FILTER_VIPS, FlowValue, Forwarding,
    PROTO_ICMP, REPLY_F_UNVERIFIED, Reason, SERVICE_F_ACL, SERVICE_F_ALLOW_ONLY,
    SERVICE_F_PASS_WHEN_EMPTY, SERVICE_F_SYN_COOKIES, SETTINGS_F_HA, TCP_FLAG_ACK, TCP_FLAG_RST,
    TCP_FLAG_SYN, VIP_F_DROP_UNSERVED, VIP_F_HA,
};

use crate::parse::{Packet, Parsed};

#[xdp]
pub fn xdplb(ctx: XdpContext) -> u32 {
    let (action, reason) = process(&ctx);
    stats::count_reason(reason);
    action
}

#[inline(always)]
fn process(ctx: &XdpContext) -> (u32, Reason) {
    if !l2::addressed_here(ctx) {
        return (xdp_action::XDP_PASS, Reason::PassOtherHost);
    }
    let pkt = match parse::parse(ctx) {
        Parsed::Packet(p) => p,
        Parsed::Verdict(action, reason) => return (action, reason),
        Parsed::Host {
            reason,
            dst_be,
            proto,
        } => return to_host(reason, dst_be, proto),
        Parsed::ArpRequest { target_be } => return arp_request(target_be),
        Parsed::IcmpError { pkt, icmp, inner } => {
            if pkt.maybe_vip
                && let Some(v) = relay::to_backend(ctx, &pkt, icmp, inner)
            {
                return v;
            }
            if let Some(v) = relay::to_client(ctx, &pkt, icmp, inner) {
                return v;
            }
            return to_host(Reason::PassNotService, pkt.dst_be, PROTO_ICMP);
        }
        Parsed::EchoRequest {
            dst_be,
            eth,
            ip,
            icmp,
        } => {
            // Ping to a VIP is answered here: the address need not be
            // configured on the host, and the answer costs nothing upstream.
            if maps::may_be(FILTER_VIPS, dst_be) && maps::vip(dst_be).is_some() {
                return icmp::echo_reply(eth, ip, icmp);
            }
            return to_host(Reason::PassNotService, dst_be, PROTO_ICMP);
        }
    };
    // (The parser passed what is neither to a VIP nor from a backend.)
    let maybe_vip = pkt.maybe_vip;
    if maybe_vip {
        // A known flow names its service by id: an array read instead of
        // the service hash lookup.
        let found = maps::find_flow(pkt.flow_key(), pkt.is_tcp(), pkt.is_syn());
        let flow = found.map(|f| f.value);
        // SAFETY: a map value pointer, read at once.
        let by_id = flow.and_then(|f| {
            maps::service_by_id(
                unsafe { (*f).service_id },
                pkt.dst_be,
                pkt.dport_be,
                pkt.proto,
            )
        });
        if let Some(svc) = by_id.or_else(|| maps::service(pkt.service_key())) {
            if !pkt.ip_checksum_ok() {
                return (xdp_action::XDP_DROP, Reason::DropBadIpChecksum);
            }
            let acl_generation = match service_acl(&pkt, &svc, flow) {
                Ok(g) => g,
                Err(reason) => return (xdp_action::XDP_DROP, reason),
            };
            // NAT routes: a packet whose TTL runs out here gets "time
            // exceeded", before any state changes.
            if svc.forwarding == Forwarding::Nat as u8 && pkt.ttl <= 1 {
                return icmp::time_exceeded(ctx);
            }
            if svc.flags & SERVICE_F_SYN_COOKIES != 0
                && pkt.is_tcp()
                && let Some(v) = syn_cookies(ctx, &pkt, &svc, flow)
            {
                return v;
            }
            return to_backend(ctx, &pkt, &svc, found, acl_generation);
        }
    }
    // Not to a possible VIP means from a possible backend (the parser
    // passed the rest); to one, the backend set is asked only now.
    if (!pkt.maybe_vip || maps::may_be(FILTER_BACKENDS, pkt.src_be))
        && let Some(rev_ptr) = reply_owner::find(pkt.flow_key())
    {
        // SAFETY: a map value pointer; copied out at once.
        let rev = unsafe { *rev_ptr };
        // Only from where the backend is: a forged reply (a RST "refusing"
        // a connection from the client side) changes nothing.
        if !forward::from_backend(ctx, &pkt, rev.backend_id, pkt.src_be) {
            return (xdp_action::XDP_DROP, Reason::DropSpoofedReply);
        }
        if !pkt.ip_checksum_ok() {
            return (xdp_action::XDP_DROP, Reason::DropBadIpChecksum);
        }
        if pkt.ttl <= 1 {
            return icmp::time_exceeded(ctx);
        }
        // A connection this node did not see open: its first reply proves
        // (or disowns) the backend it was given.
        if rev.cookie & REPLY_F_UNVERIFIED != 0
            && let nat::Pickup::Disowned = nat::verify_pickup(&pkt, rev_ptr)
        {
            return (xdp_action::XDP_DROP, Reason::DropPickupRefused);
        }
        // A SYN-cookie connection's backend side still opening, or its
        // SYN-ACK again: the cookie program answers (established ones are
        // translated below).
        if rev.cookie & COOKIE_F_ON != 0
            && (rev.cookie & COOKIE_F_PENDING != 0 || pkt.tcp_flags & TCP_FLAG_SYN != 0)
        {
            cookie::tail(ctx);
            return (xdp_action::XDP_DROP, Reason::DropCookiePending);
        }
        if let nat::Reply::Refused { redispatch } = nat::track_reply(ctx, &pkt, &rev) {
            stats::count_refused(rev.backend_id, redispatch);
            if redispatch {
                return (xdp_action::XDP_DROP, Reason::DropRstRedispatch);
            }
        }
        // SAFETY: the entry's own next-hop field.
        let hop = unsafe { core::ptr::addr_of_mut!((*rev_ptr).hop) };
        return nat::reverse(ctx, &pkt, &rev, hop);
    }
    if !maybe_vip {
        return (xdp_action::XDP_PASS, Reason::PassNotService);
    }
    to_host(Reason::PassNotService, pkt.dst_be, pkt.proto)
}

/// SYN cookies (`cookie.rs`): which TCP packets of a cookie service the
/// cookie program takes: a SYN while the service's meter says cookies, an
/// ACK of no known connection carrying a valid cookie, a packet of a cookie
/// connection whose backend has not answered. An ACK of no connection with
/// an invalid cookie is dropped while cookies are on (it is an ACK flood,
/// or a connection this LB cannot know); otherwise it goes on as a
/// mid-stream pick-up. `None`: the normal path. The tail call stays in the
/// main program's body (see `cookie::tail`).
#[inline(always)]
fn syn_cookies(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &lb_common::ServiceInfo,
    flow: Option<*mut FlowValue>,
) -> Option<(u32, Reason)> {
    let hand_over = match flow {
        None if pkt.is_syn() => cookie::wanted(svc.id),
        None if pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK | TCP_FLAG_RST) == TCP_FLAG_ACK => {
            if cookie::valid(ctx, pkt) {
                true
            } else if cookie::active(svc.id) {
                return Some((xdp_action::XDP_DROP, Reason::DropBadCookie));
            } else {
                false
            }
        }
        // A RST of no connection while cookies answer (the forged sources'
        // own hosts reset the SYN-ACKs they never asked for): nothing to
        // reset, and no state to make for it.
        None if pkt.tcp_flags & TCP_FLAG_RST != 0 && cookie::active(svc.id) => {
            return Some((xdp_action::XDP_DROP, Reason::DropBadCookie));
        }
        // SAFETY: a map value pointer, read at once.
        Some(f) => unsafe { (*f).cookie & COOKIE_F_PENDING != 0 && (*f).service_id == svc.id },
        None => false,
    };
    if !hand_over {
        return None;
    }
    cookie::tail(ctx);
    // The cookie program is not in place: a SYN or ACK goes on without it.
    flow.map(|_| (xdp_action::XDP_DROP, Reason::DropCookiePending))
}

/// The service's allow/deny lists for this packet's source: checked for a
/// flow not yet checked at the firewall's current generation (so a list
/// change reaches established flows on their next packet, and a flow's
/// packets cost one comparison otherwise). `Ok(generation)` to store with a
/// new flow (0: the service has no lists), or the drop reason.
#[inline(always)]
fn service_acl(
    pkt: &Packet,
    svc: &lb_common::ServiceInfo,
    flow: Option<*mut FlowValue>,
) -> Result<u16, Reason> {
    if svc.flags & SERVICE_F_ACL == 0 {
        return Ok(0);
    }
    let generation = maps::firewall().generation;
    // SAFETY: a map value pointer, read at once.
    let own = flow.filter(|f| unsafe { (**f).service_id } == svc.id);
    if let Some(f) = own
        // SAFETY: as above.
        && unsafe { (*f).acl_generation } == generation
    {
        return Ok(generation);
    }
    match maps::service_acl(svc.id, pkt.src_be) {
        Some(ACL_DENY) => return Err(Reason::DropDenied),
        None if svc.flags & SERVICE_F_ALLOW_ONLY != 0 => return Err(Reason::DropNotAllowed),
        _ => {}
    }
    if let Some(f) = own {
        // SAFETY: as above; a lost race only means one more check.
        unsafe { (*f).acl_generation = generation };
    }
    Ok(generation)
}

/// IPv4 the data path does not forward goes to the kernel, unless it is
/// addressed to a VIP that drops unserved traffic (ICMP excepted: ping and
/// errors). One `VIPS` lookup per such packet, none on forwarded traffic.
#[inline(always)]
fn to_host(reason: Reason, dst_be: u32, proto: u8) -> (u32, Reason) {
    if proto != PROTO_ICMP
        && maps::may_be(FILTER_VIPS, dst_be)
        && let Some(v) = maps::vip(dst_be)
        && v.flags & VIP_F_DROP_UNSERVED != 0
    {
        return (xdp_action::XDP_DROP, Reason::DropUnservedVip);
    }
    (xdp_action::XDP_PASS, reason)
}

/// An ARP request for an HA address is for the kernel to answer only while
/// this node holds the lease its MASTER daemon keeps extending. A node
/// whose daemon died keeps forwarding through the pinned program, but stops
/// claiming the addresses once the peer may have taken them.
#[inline(always)]
fn arp_request(target_be: u32) -> (u32, Reason) {
    if maps::may_be(FILTER_VIPS, target_be)
        && let Some(v) = maps::vip(target_be)
        && v.flags & VIP_F_HA != 0
    {
        // SAFETY: helper without arguments.
        let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
        if maps::settings_flags() & SETTINGS_F_HA != 0 && now >= maps::lease_until_ns() {
            return (xdp_action::XDP_DROP, Reason::DropArpNotMaster);
        }
    }
    (xdp_action::XDP_PASS, Reason::PassNotIpv4)
}

#[inline(always)]
fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    svc: &lb_common::ServiceInfo,
    found: Option<maps::Found>,
    acl_generation: u16,
) -> (u32, Reason) {
    let c = match sched::flow_backend(ctx, pkt, svc, found, acl_generation) {
        Ok(c) => c,
        Err(sched::Refusal::Limited(reason)) => {
            stats::count_rate_limited(svc.id);
            return (xdp_action::XDP_DROP, reason);
        }
        Err(sched::Refusal::TupleInUse) => {
            return (xdp_action::XDP_DROP, Reason::DropNatTupleInUse);
        }
        Err(sched::Refusal::NoBackend) => {
            stats::count_no_backend(svc.id);
            return if svc.flags & SERVICE_F_PASS_WHEN_EMPTY != 0 {
                (xdp_action::XDP_PASS, Reason::PassNoBackend)
            } else {
                (xdp_action::XDP_DROP, Reason::DropNoBackend)
            };
        }
    };
    let (action, reason) = if svc.forwarding == Forwarding::Nat as u8 {
        nat::forward(ctx, pkt, svc, &c)
    } else {
        forward::dsr(ctx, pkt, c.backend_id, c.addr_be)
    };
    // A packet the kernel forwards once it has resolved the next hop went
    // towards the backend too (its bytes are not counted here); one dropped
    // (no route, too big) opened nothing.
    let sent = matches!(reason, Reason::FwdNat | Reason::FwdDsr);
    if sent || reason == Reason::PassNoNeighbour {
        stats::count_traffic(svc.id, c.backend_id, sent.then_some(pkt.frame_len), &c);
    }
    (action, reason)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: the verifier rejects programs that could
    // get here, and no code path calls a panicking function.
    loop {}
}

/// GPL-compatible licence, required for `bpf_fib_lookup`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
