//! Destination NAT towards the backend and the reverse translation of its
//! replies, with incremental IPv4 and L4 checksum updates.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    COOKIE_F_ON, COOKIE_F_PENDING, CachedHop, FLOW_F_CLOSING, FLOW_F_ESTABLISHED,
    FLOW_F_REDISPATCHED, FLOW_F_REFUSED, FLOW_F_REPLIED, FLOW_F_SYN, FLOW_F_UNVERIFIED, FlowKey,
    NatReverse, PICKUP_WINDOW, PROTO_TCP, REPLY_F_UNVERIFIED, Reason, SERVICE_F_REDISPATCH,
    ServiceInfo, TCP_FLAG_ACK, TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN, csum,
};
use network_types::{tcp::TcpHdr, udp::UdpHdr};

use crate::{
    fault,
    forward::{decide, go, next_hop_via, to_backend_hop},
    maps::{EMBRYO_REVERSE, NAT_REVERSE},
    parse::{L4_OFF, Packet, ptr_at},
    sched::Choice,
};

/// Which address/port pair of the packet a rewrite touches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

/// Replace one endpoint (address and port), decrement the TTL (NAT routes
/// the packet; the caller made sure it is above 1) and fix both checksums.
/// Returns false if the L4 header is no longer reachable (cannot happen
/// after a successful parse, but the verifier wants the check).
#[inline(always)]
fn rewrite(ctx: &XdpContext, pkt: &Packet, side: Side, addr_be: u32, port_be: u16) -> bool {
    let (old_addr, old_port) = match side {
        Side::Source => (pkt.src_be, pkt.sport_be),
        Side::Destination => (pkt.dst_be, pkt.dport_be),
    };
    // SAFETY: `pkt.ip` was bounds-checked by the parser.
    unsafe {
        let ip = pkt.ip;
        match side {
            Side::Source => (*ip).src_addr = addr_be.to_ne_bytes(),
            Side::Destination => (*ip).dst_addr = addr_be.to_ne_bytes(),
        }
        let ttl = (*ip).ttl;
        let proto = (*ip).proto;
        (*ip).ttl = ttl.wrapping_sub(1);
        let mut check = u16::from_ne_bytes((*ip).check);
        check = csum::replace4(check, old_addr, addr_be);
        check = csum::replace2(
            check,
            u16::from_ne_bytes([ttl, proto]),
            u16::from_ne_bytes([ttl.wrapping_sub(1), proto]),
        );
        (*ip).check = check.to_ne_bytes();
    }
    if pkt.proto == PROTO_TCP {
        let Some(tcp) = ptr_at::<TcpHdr>(ctx, L4_OFF) else {
            return false;
        };
        // SAFETY: bounds-checked just above.
        unsafe {
            match side {
                Side::Source => (*tcp).source = port_be.to_ne_bytes(),
                Side::Destination => (*tcp).dest = port_be.to_ne_bytes(),
            }
            let mut check = u16::from_ne_bytes((*tcp).check);
            check = csum::replace4(check, old_addr, addr_be);
            if !fault::planted() {
                check = csum::replace2(check, old_port, port_be);
            }
            (*tcp).check = check.to_ne_bytes();
        }
    } else {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, L4_OFF) else {
            return false;
        };
        // SAFETY: bounds-checked just above.
        unsafe {
            match side {
                Side::Source => (*udp).src = port_be.to_ne_bytes(),
                Side::Destination => (*udp).dst = port_be.to_ne_bytes(),
            }
            let old = u16::from_ne_bytes((*udp).check);
            let mut check = csum::replace4(old, old_addr, addr_be);
            if !fault::planted() {
                check = csum::replace2(check, old_port, port_be);
            }
            (*udp).check = csum::udp_fixup(old, check).to_ne_bytes();
        }
    }
    true
}

/// Forward a client packet to its backend with destination NAT; for a new
/// flow entry, remember how to translate the backend's replies. The next
/// hop is looked up before the rewrite: a packet that cannot go on is left
/// as its sender sent it.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, svc: &ServiceInfo, c: &Choice) -> (u32, Reason) {
    // With the flow entry (which exists whether or not this packet can go
    // on), so a later packet of the flow finds its replies translated.
    // Not for a backend whose replies are found by the flow entry, unless
    // the connection was picked up mid-stream (its replies must prove it).
    if c.created && (c.midstream || !crate::reply_owner::sole(c.backend_id)) {
        remember_reply(pkt, svc, c);
    }
    let g = match decide(ctx, pkt, to_backend_hop(ctx, pkt, c.backend_id, c.addr_be)) {
        Ok(g) => g,
        Err(v) => return v,
    };
    if !rewrite(ctx, pkt, Side::Destination, c.addr_be, c.port_be) {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    }
    if c.cookie && pkt.tcp_flags & TCP_FLAG_ACK != 0 {
        shift(ctx, 8, c.seq_delta);
    }
    go(ctx, pkt, g, Reason::FwdNat)
}

/// Store how the backend's replies to this flow are translated back: when
/// the flow entry was (re)created. Replies keep the entry fresh in its LRU
/// table, so established packets need not touch it.
#[inline(always)]
fn remember_reply(pkt: &Packet, svc: &ServiceInfo, c: &Choice) {
    let backend = (c.backend_id, c.addr_be, c.port_be);
    // A new entry made by a TCP packet without SYN (`FLOW_F_UNVERIFIED`):
    // the reply entry says so too.
    let bits = if c.midstream { REPLY_F_UNVERIFIED } else { 0 };
    // A new connection's `tuple_taken` already cleared an old established
    // reply entry under the key; a mid-stream one did not look.
    write_reply(pkt, svc, backend, c.embryo, c.midstream, (bits, 0));
}

/// The reply entry of client packet `pkt`'s flow to `backend` (id, address,
/// port), in the half-open table (`embryo`) or the established one, with
/// the SYN-cookie state `cookie` (`COOKIE_F_*` bits, offset or cookie).
#[inline(always)]
pub fn write_reply(
    pkt: &Packet,
    svc: &ServiceInfo,
    backend: (u32, u32, u16),
    embryo: bool,
    forget: bool,
    cookie: (u8, u32),
) {
    let (backend_id, addr_be, port_be) = backend;
    let reply = FlowKey {
        src_be: addr_be,
        dst_be: pkt.src_be,
        sport_be: port_be,
        dport_be: pkt.sport_be,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let rev = NatReverse {
        vip_be: pkt.dst_be,
        vport_be: pkt.dport_be,
        service_flags: svc.flags,
        cookie: cookie.0,
        service_id: svc.id,
        backend_id,
        hop: CachedHop::default(),
        seq_delta: cookie.1,
    };
    // Written without looking first: the entry is new with its flow (an
    // overwritten one of a reused 4-tuple only loses its cached next hop).
    // On failure the reply passes untranslated to the kernel; nothing
    // better can be done without memory. A half-open connection's twin
    // goes where its flow went, so a SYN flood evicts no established reply.
    let _ = if embryo {
        if forget {
            forget_reply(reply);
        }
        EMBRYO_REVERSE.insert(reply, rev, 0)
    } else {
        // A TCP flow moved mid-connection: an older half-open entry under
        // the same key (another VIP's) would overwrite this one when its
        // connection completes. The newest entry wins, as everywhere.
        if pkt.is_tcp() && EMBRYO_REVERSE.get_ptr(reply).is_some() {
            let _ = EMBRYO_REVERSE.remove(reply);
        }
        NAT_REVERSE.insert(reply, rev, 0)
    };
}

/// Before a half-open connection's reply entry is written (a mid-stream
/// one's: a new connection's `tuple_taken` did this already): an established
/// entry under the same key (a closed connection from the same client
/// address and port to the same backend, perhaps through another VIP) would
/// be found first and translate this connection's replies as its own.
#[inline(always)]
fn forget_reply(reply: FlowKey) {
    // Looked up first: a lookup takes no lock, a delete does, and there is
    // usually nothing to delete.
    if NAT_REVERSE.get_ptr(reply).is_some() {
        let _ = NAT_REVERSE.remove(reply);
    }
}

/// Whether a backend's RST acknowledges the client's SYN (`isn_be`, as on
/// the wire): ACK set, acknowledgement number ISN + 1.
#[inline(always)]
fn acknowledges_syn(ctx: &XdpContext, flags: u8, isn_be: u32) -> bool {
    if flags & TCP_FLAG_ACK == 0 {
        return false;
    }
    let Some(ack) = ptr_at::<[u8; 4]>(ctx, L4_OFF + 8) else {
        return false;
    };
    // SAFETY: bounds-checked just above.
    let ack = u32::from_be_bytes(unsafe { *ack });
    ack == u32::from_be(isn_be).wrapping_add(1)
}

/// What the first reply of an unverified flow says about its backend.
pub enum Pickup {
    /// The backend has this connection: the flow is verified now.
    Proven,
    /// It does not (a RST without ACK: no such connection; or a sequence
    /// number far from what the client acknowledged: another connection on
    /// the same 4-tuple): the reply is withheld, the client's next packet
    /// goes to another backend.
    Disowned,
    /// Nothing to decide (no flow, moved on, a SYN-ACK, or no
    /// acknowledgement of the client's seen yet).
    Open,
}

/// Judge a backend's reply to a flow this node did not see open
/// (`REPLY_F_UNVERIFIED`, issue 20). A backend that has the connection
/// answers with its next sequence number, at or after what the client
/// acknowledged; one that has not answers an ACK with a RST carrying no
/// ACK (RFC 793), or, holding an older connection of the 4-tuple in
/// TIME_WAIT, with an ACK of that one's numbers. Out of line (a BPF
/// subprogram): a few packets per failover take this path.
#[inline(never)]
pub fn verify_pickup(pkt: &Packet, rev: *mut NatReverse) -> Pickup {
    if !pkt.is_tcp() || pkt.tcp_flags & TCP_FLAG_SYN != 0 {
        return Pickup::Open;
    }
    // SAFETY: a map value pointer; fields read at once.
    let (vip_be, vport_be, backend_id) =
        unsafe { ((*rev).vip_be, (*rev).vport_be, (*rev).backend_id) };
    let client = FlowKey {
        src_be: pkt.dst_be,
        dst_be: vip_be,
        sport_be: pkt.dport_be,
        dport_be: vport_be,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let Some(v) = crate::maps::any_flow(client) else {
        return Pickup::Open;
    };
    // SAFETY: a pointer into the map value, read at once; a concurrent
    // update on another CPU can at worst be lost.
    let (flow_backend, flags, cookie, ack_be) =
        unsafe { ((*v).backend_id, (*v).flags, (*v).cookie, (*v).seq_delta) };
    let unverified = flags & FLOW_F_UNVERIFIED != 0 && cookie == 0;
    if flow_backend != backend_id || !unverified {
        // SAFETY: as above, the reply entry's own byte.
        unsafe { (*rev).cookie &= !REPLY_F_UNVERIFIED };
        return Pickup::Open;
    }
    let bare_rst = pkt.tcp_flags & (TCP_FLAG_RST | TCP_FLAG_ACK) == TCP_FLAG_RST;
    let far =
        ack_be != 0 && u32::from_be(pkt.seq_be).wrapping_sub(u32::from_be(ack_be)) >= PICKUP_WINDOW;
    if bare_rst || far {
        // SAFETY: as above.
        unsafe { (*v).flags = flags | FLOW_F_REFUSED };
        return Pickup::Disowned;
    }
    if ack_be == 0 && pkt.tcp_flags & TCP_FLAG_RST != 0 {
        return Pickup::Open; // nothing to judge it by yet
    }
    // SAFETY: as above.
    unsafe {
        (*v).flags = flags & !FLOW_F_UNVERIFIED;
        (*v).seq_delta = 0;
        (*rev).cookie &= !REPLY_F_UNVERIFIED;
    }
    Pickup::Proven
}

/// What a backend's TCP reply says about its connection.
pub enum Reply {
    /// Nothing the flow needs to know, or no flow.
    Plain,
    /// The backend refused the connection (RST to the SYN, before any
    /// SYN-ACK). With `redispatch`, the RST is withheld: the client's retried
    /// SYN goes to another backend.
    Refused { redispatch: bool },
}

/// Follow the backend's side of a NAT connection in the client's flow entry:
/// SYN-ACK (answered), FIN/RST (closing), RST to the SYN (refused). Only
/// replies carrying SYN, FIN or RST are looked at, so ordinary data costs
/// nothing extra. A RST to the SYN counts (and closes) only if it
/// acknowledges the SYN (ACK, ISN + 1), as RFC 793 has the client accept
/// it (RFC 5961's spirit): one that does not is passed on, changing nothing.
#[inline(always)]
pub fn track_reply(ctx: &XdpContext, pkt: &Packet, rev: &NatReverse) -> Reply {
    let f = pkt.tcp_flags;
    if !pkt.is_tcp() || f & (TCP_FLAG_SYN | TCP_FLAG_FIN | TCP_FLAG_RST) == 0 {
        return Reply::Plain;
    }
    let client = FlowKey {
        src_be: pkt.dst_be,
        dst_be: rev.vip_be,
        sport_be: pkt.dport_be,
        dport_be: rev.vport_be,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let Some(v) = crate::maps::any_flow(client) else {
        return Reply::Plain;
    };
    // SAFETY: a pointer into the map value; a concurrent flag update on
    // another CPU can at worst be lost.
    let flow = unsafe { *v };
    if flow.backend_id != rev.backend_id {
        return Reply::Plain; // the connection moved on; old news
    }
    let mut flags = flow.flags;
    let mut reply = Reply::Plain;
    if f & TCP_FLAG_RST != 0 {
        let handshake = FLOW_F_SYN | FLOW_F_REPLIED | FLOW_F_ESTABLISHED | FLOW_F_CLOSING;
        if flags & handshake == FLOW_F_SYN {
            if !acknowledges_syn(ctx, f, flow.syn_seq_be) {
                return Reply::Plain;
            }
            let redispatch =
                rev.service_flags & SERVICE_F_REDISPATCH != 0 && flags & FLOW_F_REDISPATCHED == 0;
            flags |= if redispatch {
                FLOW_F_REFUSED
            } else {
                FLOW_F_CLOSING
            };
            reply = Reply::Refused { redispatch };
        } else {
            flags |= FLOW_F_CLOSING;
        }
    } else if f & TCP_FLAG_FIN != 0 {
        flags |= FLOW_F_CLOSING;
    } else {
        flags |= FLOW_F_REPLIED; // SYN-ACK
    }
    if flags != flow.flags {
        if flags & FLOW_F_CLOSING != 0 {
            crate::sched::uncount(flow.flags, flow.backend_id);
        }
        // SAFETY: as above.
        unsafe { (*v).flags = flags };
    }
    reply
}

/// Translate a backend's reply back to the VIP and forward it to the client.
#[inline(always)]
pub fn reverse(
    ctx: &XdpContext,
    pkt: &Packet,
    rev: &NatReverse,
    hop: *mut CachedHop,
) -> (u32, Reason) {
    reverse_as::<false>(ctx, pkt, rev, hop)
}

/// [`reverse`]; `REFUSAL`: the backend's RST to a SYN-cookie connection
/// still opening (the cookie program's case; a constant, so the main
/// program carries none of it).
#[inline(always)]
pub fn reverse_as<const REFUSAL: bool>(
    ctx: &XdpContext,
    pkt: &Packet,
    rev: &NatReverse,
    hop: *mut CachedHop,
) -> (u32, Reason) {
    let hop = next_hop_via(ctx, pkt, rev.vip_be, pkt.dst_be, Some(hop));
    let g = match decide(ctx, pkt, hop) {
        Ok(g) => g,
        Err(v) => return v,
    };
    if !rewrite(ctx, pkt, Side::Source, rev.vip_be, rev.vport_be) {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    }
    // SYN cookies: the backend's numbers less the offset; a refusal (the
    // one packet of a connection still opening that comes this way) at the
    // sequence number after the cookie, which the client's open side
    // expects. After the next-hop decision, so a packet that goes no
    // further is left as it came.
    if REFUSAL {
        set_seq(ctx, rev.seq_delta.wrapping_add(1));
    } else if rev.cookie & (COOKIE_F_ON | COOKIE_F_PENDING) == COOKIE_F_ON {
        shift(ctx, 4, rev.seq_delta.wrapping_neg());
    }
    go(ctx, pkt, g, Reason::FwdReverseNat)
}

/// Add `delta` to the TCP header's 32-bit field at `off` (4: sequence,
/// 8: acknowledgement number), checksum updated: a SYN-cookie connection's
/// two ISNs differ.
#[inline(always)]
pub fn shift(ctx: &XdpContext, off: usize, delta: u32) {
    let Some(tcp) = ptr_at::<[u8; 20]>(ctx, L4_OFF) else {
        return;
    };
    // SAFETY: bounds-checked just above; `off` is 4 or 8.
    unsafe {
        let t = &mut *tcp;
        let old = [t[off], t[off + 1], t[off + 2], t[off + 3]];
        let new = u32::from_be_bytes(old).wrapping_add(delta).to_be_bytes();
        t[off..off + 4].copy_from_slice(&new);
        let check = csum::replace4(
            u16::from_ne_bytes([t[16], t[17]]),
            u32::from_ne_bytes(old),
            u32::from_ne_bytes(new),
        );
        t[16..18].copy_from_slice(&check.to_ne_bytes());
    }
}

/// Set the TCP sequence number (checksum updated).
#[inline(always)]
pub fn set_seq(ctx: &XdpContext, seq: u32) {
    let Some(tcp) = ptr_at::<[u8; 20]>(ctx, L4_OFF) else {
        return;
    };
    // SAFETY: bounds-checked just above.
    let old = unsafe { u32::from_be_bytes([(*tcp)[4], (*tcp)[5], (*tcp)[6], (*tcp)[7]]) };
    shift(ctx, 4, seq.wrapping_sub(old));
}
