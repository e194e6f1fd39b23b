//! ICMP errors about balanced flows, relayed to the backend that owns the
//! flow. A router between the LB and a client answers a backend's packet
//! (sent from the VIP) with "fragmentation needed" or "unreachable"
//! addressed to the VIP; only the backend can act on it (path-MTU
//! discovery, giving up a connection). The quoted header names the flow:
//! from the VIP to the client, so the client's flow entry is the quote
//! reversed. DSR backends hold the VIP and get the error as it is; for NAT
//! the outer destination and the quoted source become the backend's
//! address and port, with every checksum the change touches updated.
//!
//! The other way (`to_client`): a router between the LB and a backend
//! answers a NAT flow's packet (client -> backend) with an ICMP error to the
//! client. The client never heard of the backend, so its stack would not
//! find the socket the quote names: the quoted destination goes back to the
//! VIP and port. Taken only from where the backend is, as replies are.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    BACKEND_F_ACTIVE, Backend, FlowKey, Forwarding, PROTO_TCP, PROTO_UDP, Reason, csum,
};

use crate::{
    forward::{self, NextHop, decide, go, to_backend_hop},
    maps::{self, BACKENDS},
    parse::{IPV4_LEN, L4_OFF, Packet, QUOTE_LEN, ptr_at},
};

const ICMP_LEN: usize = 8;
/// End of the checksum field in a TCP header.
const TCP_CHECK_END: usize = 18;

/// The quoted TCP checksum, when the quote reaches it (Linux quotes up to
/// 576 bytes).
#[inline(always)]
fn quoted_tcp_check(
    ctx: &XdpContext,
    pkt: &Packet,
    inner: *mut [u8; QUOTE_LEN],
) -> Option<*mut [u8; 2]> {
    if inner_proto(inner) == PROTO_TCP
        && pkt.ip_len as usize >= IPV4_LEN + ICMP_LEN + IPV4_LEN + TCP_CHECK_END
    {
        ptr_at::<[u8; 2]>(ctx, L4_OFF + ICMP_LEN + IPV4_LEN + TCP_CHECK_END - 2)
    } else {
        None
    }
}

#[inline(always)]
fn inner_proto(inner: *mut [u8; QUOTE_LEN]) -> u8 {
    // SAFETY: the parser bounds-checked the quote.
    unsafe { (*inner)[9] }
}

/// The client flow an ICMP error's quote (VIP -> client) is about.
#[inline(always)]
fn quoted_flow(q: &[u8; QUOTE_LEN]) -> FlowKey {
    FlowKey {
        src_be: u32::from_ne_bytes([q[16], q[17], q[18], q[19]]),
        dst_be: u32::from_ne_bytes([q[12], q[13], q[14], q[15]]),
        sport_be: u16::from_ne_bytes([q[22], q[23]]),
        dport_be: u16::from_ne_bytes([q[20], q[21]]),
        proto: q[9],
        _pad: [0; 3],
    }
}

/// Relay the error to the flow's backend, or `None` if it is about no
/// flow the LB balances (then the kernel has it, as any other ICMP).
#[inline(always)]
pub fn to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    icmp: *mut [u8; 4],
    inner: *mut [u8; QUOTE_LEN],
) -> Option<(u32, Reason)> {
    // SAFETY: the parser bounds-checked the quote.
    let key = quoted_flow(unsafe { &*inner });
    // SAFETY: copied out at once.
    let f = unsafe { *maps::any_flow(key)? };
    if pkt.dst_be != key.dst_be {
        return None;
    }
    let svc = maps::service_by_id(f.service_id, key.dst_be, key.dport_be, key.proto)?;
    let backend: Backend = *BACKENDS.get(f.backend_id)?;
    if backend.flags & BACKEND_F_ACTIVE == 0 {
        return None;
    }
    if !pkt.ip_checksum_ok() {
        return Some((xdp_action::XDP_DROP, Reason::DropBadIpChecksum));
    }
    let nat = svc.forwarding == Forwarding::Nat as u8;
    if nat && pkt.ttl <= 1 {
        // Routed like any NAT packet; no ICMP is sent about an ICMP error.
        return Some((xdp_action::XDP_DROP, Reason::DropTtlExceeded));
    }
    let hop = to_backend_hop(ctx, pkt, f.backend_id, backend.addr_be);
    if let NextHop::FragNeeded { .. } = hop {
        // No ICMP error is sent about an ICMP error (RFC 1122 3.2.2).
        return Some((xdp_action::XDP_DROP, Reason::DropTooBig));
    }
    let g = match decide(ctx, pkt, hop) {
        Ok(g) => g,
        Err(v) => return Some(v),
    };
    if nat {
        // The quoted TCP checksum is updated too, as Linux's own NAT does.
        let tcp_check = quoted_tcp_check(ctx, pkt, inner);
        translate(pkt, icmp, inner, tcp_check, &backend);
    }
    Some(go(ctx, pkt, g, Reason::FwdIcmpToBackend))
}

/// Relay an error from the backend side about a NAT flow to its client, or
/// `None` if it is about no NAT flow (the kernel's, as any other ICMP).
/// Inline: it calls two subprograms (the origin check, the FIB), and a
/// subprogram calling them would stack three frames past the main
/// program's 512 bytes.
#[inline(always)]
pub fn to_client(
    ctx: &XdpContext,
    pkt: &Packet,
    icmp: *mut [u8; 4],
    inner: *mut [u8; QUOTE_LEN],
) -> Option<(u32, Reason)> {
    // SAFETY: the parser bounds-checked the quote.
    let q = unsafe { &*inner };
    // The quote is client -> backend; the reply entry is keyed the other
    // way.
    let key = FlowKey {
        src_be: u32::from_ne_bytes([q[16], q[17], q[18], q[19]]),
        dst_be: u32::from_ne_bytes([q[12], q[13], q[14], q[15]]),
        sport_be: u16::from_ne_bytes([q[22], q[23]]),
        dport_be: u16::from_ne_bytes([q[20], q[21]]),
        proto: q[9],
        _pad: [0; 3],
    };
    if pkt.dst_be != key.dst_be {
        return None;
    }
    let rev = crate::reply_owner::find(key)?;
    // SAFETY: a map value pointer; the three fields are read at once.
    let (backend_id, vip_be, vport_be) =
        unsafe { ((*rev).backend_id, (*rev).vip_be, (*rev).vport_be) };
    if !forward::from_backend(ctx, pkt, backend_id, key.src_be) {
        return Some((xdp_action::XDP_DROP, Reason::DropSpoofedReply));
    }
    if !pkt.ip_checksum_ok() {
        return Some((xdp_action::XDP_DROP, Reason::DropBadIpChecksum));
    }
    if pkt.ttl <= 1 {
        // No ICMP error is sent about an ICMP error.
        return Some((xdp_action::XDP_DROP, Reason::DropTtlExceeded));
    }
    // Uncached: errors are rare, and the flow's reply cache is the reply's.
    let hop = forward::next_hop(ctx, pkt, pkt.src_be, pkt.dst_be);
    if let NextHop::FragNeeded { .. } = hop {
        return Some((xdp_action::XDP_DROP, Reason::DropTooBig));
    }
    let g = match decide(ctx, pkt, hop) {
        Ok(g) => g,
        Err(v) => return Some(v),
    };
    let tcp_check = quoted_tcp_check(ctx, pkt, inner);
    translate_to_client(pkt, icmp, inner, tcp_check, vip_be, vport_be);
    Some(go(ctx, pkt, g, Reason::FwdIcmpToClient))
}

/// NAT, towards the client: TTL down by one (routed), quoted destination
/// backend:port -> VIP:port, with the outer IPv4, quoted IPv4, quoted UDP
/// or TCP (if quoted) and ICMP checksums updated.
#[inline(always)]
fn translate_to_client(
    pkt: &Packet,
    icmp: *mut [u8; 4],
    inner: *mut [u8; QUOTE_LEN],
    tcp_check: Option<*mut [u8; 2]>,
    vip_be: u32,
    vport_be: u16,
) {
    // SAFETY: all pointers were bounds-checked by the parser; each field is
    // read and written through them.
    unsafe {
        let ip = pkt.ip;
        let (ttl, proto) = ((*ip).ttl, (*ip).proto);
        (*ip).ttl = ttl - 1;
        let check = csum::replace2(
            u16::from_ne_bytes((*ip).check),
            u16::from_ne_bytes([ttl, proto]),
            u16::from_ne_bytes([ttl - 1, proto]),
        );
        (*ip).check = check.to_ne_bytes();

        let q = &mut *inner;
        let old_dst = u32::from_ne_bytes([q[16], q[17], q[18], q[19]]);
        q[16..20].copy_from_slice(&vip_be.to_ne_bytes());
        let old_qcheck = u16::from_ne_bytes([q[10], q[11]]);
        let qcheck = csum::replace4(old_qcheck, old_dst, vip_be);
        q[10..12].copy_from_slice(&qcheck.to_ne_bytes());
        let old_port = u16::from_ne_bytes([q[22], q[23]]);
        q[22..24].copy_from_slice(&vport_be.to_ne_bytes());
        let icmp = &mut *icmp;
        let mut icmp_check = u16::from_ne_bytes([icmp[2], icmp[3]]);
        icmp_check = csum::replace4(icmp_check, old_dst, vip_be);
        icmp_check = csum::replace2(icmp_check, old_qcheck, qcheck);
        icmp_check = csum::replace2(icmp_check, old_port, vport_be);
        if let Some(t) = tcp_check {
            let t = &mut *t;
            let old = u16::from_ne_bytes(*t);
            let mut c = csum::replace4(old, old_dst, vip_be);
            c = csum::replace2(c, old_port, vport_be);
            *t = c.to_ne_bytes();
            icmp_check = csum::replace2(icmp_check, old, c);
        }
        if q[9] == PROTO_UDP {
            let old_ucheck = u16::from_ne_bytes([q[26], q[27]]);
            let mut u = csum::replace4(old_ucheck, old_dst, vip_be);
            u = csum::replace2(u, old_port, vport_be);
            let ucheck = csum::udp_fixup(old_ucheck, u);
            q[26..28].copy_from_slice(&ucheck.to_ne_bytes());
            icmp_check = csum::replace2(icmp_check, old_ucheck, ucheck);
        }
        icmp[2..4].copy_from_slice(&icmp_check.to_ne_bytes());
    }
}

/// NAT: outer destination VIP -> backend (TTL down by one, as NAT routes),
/// quoted source VIP:port -> backend:port, with the outer IPv4, quoted
/// IPv4, quoted UDP or TCP (if quoted) and ICMP checksums updated.
#[inline(always)]
fn translate(
    pkt: &Packet,
    icmp: *mut [u8; 4],
    inner: *mut [u8; QUOTE_LEN],
    tcp_check: Option<*mut [u8; 2]>,
    b: &Backend,
) {
    // SAFETY: all pointers were bounds-checked by the parser; each field is
    // read and written through them.
    unsafe {
        let ip = pkt.ip;
        let old_dst = u32::from_ne_bytes((*ip).dst_addr);
        (*ip).dst_addr = b.addr_be.to_ne_bytes();
        let (ttl, proto) = ((*ip).ttl, (*ip).proto);
        (*ip).ttl = ttl - 1;
        let mut check = csum::replace4(u16::from_ne_bytes((*ip).check), old_dst, b.addr_be);
        check = csum::replace2(
            check,
            u16::from_ne_bytes([ttl, proto]),
            u16::from_ne_bytes([ttl - 1, proto]),
        );
        (*ip).check = check.to_ne_bytes();

        let q = &mut *inner;
        let old_src = u32::from_ne_bytes([q[12], q[13], q[14], q[15]]);
        q[12..16].copy_from_slice(&b.addr_be.to_ne_bytes());
        let old_qcheck = u16::from_ne_bytes([q[10], q[11]]);
        let qcheck = csum::replace4(old_qcheck, old_src, b.addr_be);
        q[10..12].copy_from_slice(&qcheck.to_ne_bytes());
        let old_port = u16::from_ne_bytes([q[20], q[21]]);
        q[20..22].copy_from_slice(&b.port_be.to_ne_bytes());
        let icmp = &mut *icmp;
        let mut icmp_check = u16::from_ne_bytes([icmp[2], icmp[3]]);
        icmp_check = csum::replace4(icmp_check, old_src, b.addr_be);
        icmp_check = csum::replace2(icmp_check, old_qcheck, qcheck);
        icmp_check = csum::replace2(icmp_check, old_port, b.port_be);
        if let Some(t) = tcp_check {
            let t = &mut *t;
            let old = u16::from_ne_bytes(*t);
            let mut c = csum::replace4(old, old_src, b.addr_be);
            c = csum::replace2(c, old_port, b.port_be);
            *t = c.to_ne_bytes();
            icmp_check = csum::replace2(icmp_check, old, c);
        }
        if q[9] == PROTO_UDP {
            // The quoted UDP checksum (if the datagram had one) covers the
            // pseudo-header's source and the source port.
            let old_ucheck = u16::from_ne_bytes([q[26], q[27]]);
            let mut u = csum::replace4(old_ucheck, old_src, b.addr_be);
            u = csum::replace2(u, old_port, b.port_be);
            let ucheck = csum::udp_fixup(old_ucheck, u);
            q[26..28].copy_from_slice(&ucheck.to_ne_bytes());
            icmp_check = csum::replace2(icmp_check, old_ucheck, ucheck);
        }
        icmp[2..4].copy_from_slice(&icmp_check.to_ne_bytes());
    }
}
