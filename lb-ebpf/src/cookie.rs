//! SYN cookies for NAT services. Above a service's SYN-rate threshold the
//! LB answers a client's SYN itself, with a SYN-ACK whose sequence number
//! is a kernel SYN cookie (`bpf_tcp_raw_gen_syncookie_ipv4`), and keeps no
//! state. A client ACK that carries a valid cookie
//! (`bpf_tcp_raw_check_syncookie_ipv4`) opens the connection: a backend is
//! scheduled, and the ACK goes on as the SYN of the backend's side (with
//! the client's ISN and MSS). The backend's SYN-ACK is answered by the LB
//! with the ACK that completes that side, and from then on the backend's
//! sequence numbers are shifted by the difference of the two ISNs (`seq_delta`
//! in the flow and reverse-NAT entries; the client's acknowledgements the
//! other way).
//!
//! Neither side negotiates window scaling, SACK or timestamps (the cookie
//! has no room for them, as with the kernel's own cookies without
//! timestamps), and data the client sends before the backend has answered
//! is dropped for the client to send again.
//!
//! The work that builds packets runs in its own program (`xdplb_cookie`),
//! reached by a tail call from the main one, so it has a stack of its own
//! (the main program's is nearly full).

use aya_ebpf::{
    bindings::{iphdr, tcphdr, xdp_action},
    helpers::generated::{
        bpf_ktime_get_ns, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv4,
        bpf_xdp_adjust_tail,
    },
    macros::{map, xdp},
    maps::ProgramArray,
    programs::XdpContext,
};
use lb_common::{
    COOKIE_F_ON, COOKIE_F_PENDING, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FLOW_F_REPLIED, FLOW_F_SYN,
    FlowKey, FlowValue, NatReverse, PROTO_TCP, Reason, SERVICE_F_ACL, SERVICE_F_RATE_LIMIT,
    SERVICE_F_SYN_COOKIES, SYN_COOKIE_HOLD_NS, Scheduler, ServiceInfo, TCP_FLAG_ACK, TCP_FLAG_RST,
    TCP_FLAG_SYN, csum,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    forward, maps, nat,
    parse::{self, ETH_LEN, L4_OFF, Packet, Parsed, ptr_at},
    rate, sched, stats,
};

/// The cookie program, in slot 0 (the daemon puts it there after load).
#[map]
pub static COOKIE_PROGRAM: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The MSS the LB announces in its SYN-ACK: what a backend behind an
/// Ethernet (1500-byte MTU) path receives.
const OWN_MSS: u16 = 1460;
/// The kernel's cookie MSS table for IPv4 (`msstab`): a cookie encodes one
/// of these, the largest not above the client's MSS. Largest first.
const MSS_TABLE: [u16; 4] = [1460, 1440, 1300, 536];
/// The MSS a host assumes when the SYN names none (RFC 9293).
const DEFAULT_MSS: u16 = 536;
const TCP_LEN: usize = 20;
/// A TCP header with an MSS option and nothing else.
const TCP_MSS_LEN: usize = 24;
const IP_DF_BE: [u8; 2] = [0x40, 0];

/// A `T` at `off` from the frame's start `base` (a packet pointer the parser
/// checked), if the frame reaches that far. The cookie program takes its
/// pointers from the parser's instead of loading the frame's start again:
/// LLVM widened such a second load with shifts, which the verifier refuses.
#[inline(always)]
fn at<T>(ctx: &XdpContext, base: *mut EthHdr, off: usize) -> Option<*mut T> {
    let p = base as usize + off;
    if p + core::mem::size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some(p as *mut T)
}

/// Whether the service answers this SYN with a cookie: its meter (a GCRA
/// over its SYNs) is over the threshold now or was within the hold time.
/// Out of line: only SYNs of cookie services come here.
#[inline(never)]
pub fn wanted(id: u32) -> bool {
    let Some(limit) = maps::RATE_LIMITS.get(id) else {
        return false;
    };
    if limit.syn_cookie_interval_ns == 0 {
        return true; // threshold 0: always
    }
    let Some(st) = maps::SYN_COOKIES.get_ptr_mut(id) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: a map value pointer; two CPUs racing lose one update at worst.
    unsafe {
        match rate::gcra(
            (*st).tat_ns,
            now,
            limit.syn_cookie_interval_ns,
            limit.syn_cookie_tolerance_ns,
        ) {
            Some(t) => (*st).tat_ns = t,
            None => (*st).until_ns = now + SYN_COOKIE_HOLD_NS,
        }
        now < (*st).until_ns
    }
}

/// Whether cookies are answering the service's SYNs now (no metering).
#[inline(always)]
pub fn active(id: u32) -> bool {
    let Some(limit) = maps::RATE_LIMITS.get(id) else {
        return false;
    };
    if limit.syn_cookie_interval_ns == 0 {
        return true;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    maps::SYN_COOKIES.get(id).is_some_and(|s| now < s.until_ns)
}

/// Whether this TCP packet's acknowledgement is a valid cookie for it.
#[inline(always)]
pub fn valid(ctx: &XdpContext, pkt: &Packet) -> bool {
    let Some(tcp) = at::<[u8; TCP_LEN]>(ctx, pkt.eth, L4_OFF) else {
        return false;
    };
    // SAFETY: both headers bounds-checked (the IPv4 one by the parser).
    unsafe { bpf_tcp_raw_check_syncookie_ipv4(pkt.ip.cast::<iphdr>(), tcp.cast::<tcphdr>()) == 0 }
}

/// Hand the packet to the cookie program. Returns only if that failed (the
/// program is not in place): the caller goes on without it. Kept in the
/// caller's body: a tail call from a BPF subprogram would limit every
/// frame's stack to 256 bytes.
#[inline(always)]
pub fn tail(ctx: &XdpContext) {
    // SAFETY: a tail call into our own program array.
    unsafe { COOKIE_PROGRAM.tail_call(ctx, 0) };
}

/// The cookie program: what the main program handed over, found again from
/// the packet (parse, service or reverse entry).
#[xdp]
pub fn xdplb_cookie(ctx: XdpContext) -> u32 {
    let (action, reason) = handle(&ctx);
    stats::count_reason(reason);
    action
}

#[inline(always)]
fn handle(ctx: &XdpContext) -> (u32, Reason) {
    let Parsed::Packet(pkt) = parse::parse(ctx) else {
        // The main program handed over a TCP packet it had parsed.
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    };
    if !pkt.is_tcp() {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    }
    if pkt.maybe_vip
        && let Some(svc) = maps::service(pkt.service_key())
        && svc.flags & SERVICE_F_SYN_COOKIES != 0
    {
        return from_client(ctx, &pkt, &svc);
    }
    if let Some(rev) = maps::nat_reverse(pkt.flow_key(), pkt.is_tcp()) {
        return from_backend(ctx, &pkt, rev);
    }
    (xdp_action::XDP_DROP, Reason::DropCookiePending)
}

/// A client packet: a SYN to answer, a cookie ACK that opens a connection,
/// or a packet of a connection whose backend has not answered yet (its SYN
/// to the backend is sent again).
#[inline(always)]
fn from_client(ctx: &XdpContext, pkt: &Packet, svc: &ServiceInfo) -> (u32, Reason) {
    if pkt.is_syn() {
        return answer_syn(ctx, pkt);
    }
    if let Some(found) = maps::find_flow(pkt.flow_key(), pkt.is_tcp(), false) {
        // SAFETY: a map value pointer, read at once.
        let (isn_be, cookie, backend_id, flags) = unsafe {
            (
                (*found.value).syn_seq_be,
                (*found.value).seq_delta,
                (*found.value).backend_id,
                (*found.value).cookie,
            )
        };
        if flags & COOKIE_F_PENDING == 0 {
            // The backend answered meanwhile; the client sends it again.
            return (xdp_action::XDP_DROP, Reason::DropCookiePending);
        }
        let mss = client_mss(pkt, u32::from_be(isn_be), cookie);
        return syn_to_backend(ctx, pkt, backend_id, isn_be, mss);
    }
    open(ctx, pkt, svc)
}

/// A valid cookie ACK (the main program checked it): schedule a backend,
/// keep the half-open connection, and send the backend its SYN.
#[inline(always)]
fn open(ctx: &XdpContext, pkt: &Packet, svc: &ServiceInfo) -> (u32, Reason) {
    let Some(tcp) = at::<[u8; TCP_LEN]>(ctx, pkt.eth, L4_OFF) else {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    };
    // SAFETY: bounds-checked just above.
    let ack = u32::from_be_bytes(unsafe { [(*tcp)[8], (*tcp)[9], (*tcp)[10], (*tcp)[11]] });
    let isn = u32::from_be(pkt.seq_be).wrapping_sub(1);
    let cookie = ack.wrapping_sub(1);
    if svc.flags & SERVICE_F_RATE_LIMIT != 0
        && let Err(reason) = rate::admit(svc.id, pkt.src_be)
    {
        stats::count_rate_limited(svc.id);
        return (xdp_action::XDP_DROP, reason);
    }
    let Some((backend_id, backend)) = sched::schedule_new(pkt, svc) else {
        stats::count_no_backend(svc.id);
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    // As for any new NAT connection (`sched::claim`).
    let Some((backend_id, backend)) = sched::claim::<false>(pkt, svc, backend_id, backend) else {
        return (xdp_action::XDP_DROP, Reason::DropNatTupleInUse);
    };
    let mut flags = FLOW_F_SYN | FLOW_F_ESTABLISHED;
    if svc.scheduler == Scheduler::LeastConn as u8 {
        flags |= FLOW_F_COUNTED;
        maps::add_conns(backend_id, 1);
    }
    let acl_generation = if svc.flags & SERVICE_F_ACL != 0 {
        maps::firewall().generation
    } else {
        0
    };
    let key = pkt.flow_key();
    let value = FlowValue {
        backend_id,
        service_id: svc.id,
        syn_seq_be: isn.to_be(),
        flags,
        cookie: COOKIE_F_ON | COOKIE_F_PENDING,
        acl_generation,
        seq_delta: cookie,
    };
    let _ = maps::EMBRYOS.insert(key, value, 0);
    maps::embryo_gate_stamp();
    nat::write_reply(
        pkt,
        svc,
        (backend_id, backend.addr_be, backend.port_be),
        true,
        false, // `sched::claim` above cleared an old entry under the key
        (COOKIE_F_ON | COOKIE_F_PENDING, cookie),
    );
    stats::count_cookie_connection(svc.id, backend_id);
    let mss = client_mss(pkt, isn, cookie);
    syn_to_backend(ctx, pkt, backend_id, isn.to_be(), mss)
}

/// The client's MSS as its cookie encodes it: the cookie is made again for
/// each MSS the kernel's table holds until one matches (the cookie check
/// does not say which). A cookie made in the previous minute matches none:
/// then the smallest.
#[inline(never)]
fn client_mss(pkt: &Packet, isn: u32, cookie: u32) -> u16 {
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[9] = PROTO_TCP;
    ip[12..16].copy_from_slice(&pkt.src_be.to_ne_bytes());
    ip[16..20].copy_from_slice(&pkt.dst_be.to_ne_bytes());
    let mut th = [0u8; TCP_MSS_LEN];
    th[0..2].copy_from_slice(&pkt.sport_be.to_ne_bytes());
    th[2..4].copy_from_slice(&pkt.dport_be.to_ne_bytes());
    th[4..8].copy_from_slice(&isn.to_be_bytes());
    th[12] = ((TCP_MSS_LEN / 4) as u8) << 4;
    th[13] = TCP_FLAG_SYN;
    th[20] = 2;
    th[21] = 4;
    let mut i = 0;
    while i < MSS_TABLE.len() {
        let mss = MSS_TABLE[i];
        th[22..24].copy_from_slice(&mss.to_be_bytes());
        // SAFETY: both headers are initialised stack memory of the sizes given.
        let r = unsafe {
            bpf_tcp_raw_gen_syncookie_ipv4(
                ip.as_mut_ptr().cast::<iphdr>(),
                th.as_mut_ptr().cast::<tcphdr>(),
                TCP_MSS_LEN as u32,
            )
        };
        if r >= 0 && r as u32 == cookie {
            return mss;
        }
        i += 1;
    }
    DEFAULT_MSS
}

/// A cookie for the SYN whose TCP header is `N` bytes long.
#[inline(always)]
fn gen_cookie<const N: usize>(ctx: &XdpContext, eth: *mut EthHdr, ip: *mut Ipv4Hdr) -> Option<u32> {
    let th = at::<[u8; N]>(ctx, eth, L4_OFF)?;
    // SAFETY: both headers bounds-checked; the helper reads `N` bytes.
    let r = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv4(ip.cast::<iphdr>(), th.cast::<tcphdr>(), N as u32)
    };
    (r >= 0).then_some(r as u32)
}

/// Answer a client SYN with a cookie SYN-ACK, built in place: addresses,
/// ports and MACs swapped, MSS option only (if the SYN had room for
/// options), nothing after the header. Inlined: out of line, LLVM widened
/// the packet pointer it loads with shifts, which the verifier refuses.
#[inline(always)]
fn answer_syn(ctx: &XdpContext, pkt: &Packet) -> (u32, Reason) {
    let (eth, frame_len) = (pkt.eth, pkt.frame_len);
    let (Some(ip), Some(tcp)) = (
        at::<Ipv4Hdr>(ctx, eth, ETH_LEN),
        at::<[u8; TCP_LEN]>(ctx, eth, L4_OFF),
    ) else {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    };
    // Routed back to the client as the kernel would route it (a source the
    // LB has no route to, a bogon, gets no answer).
    let go = match forward::decide(
        ctx,
        pkt,
        forward::next_hop(ctx, pkt, pkt.dst_be, pkt.src_be),
    ) {
        Ok(g) => g,
        Err(v) => return v,
    };
    // SAFETY: bounds-checked just above.
    let doff = unsafe { (*tcp)[12] } >> 4;
    let cookie = match doff {
        5 => gen_cookie::<20>(ctx, eth, ip),
        6 => gen_cookie::<24>(ctx, eth, ip),
        7 => gen_cookie::<28>(ctx, eth, ip),
        8 => gen_cookie::<32>(ctx, eth, ip),
        9 => gen_cookie::<36>(ctx, eth, ip),
        10 => gen_cookie::<40>(ctx, eth, ip),
        11 => gen_cookie::<44>(ctx, eth, ip),
        12 => gen_cookie::<48>(ctx, eth, ip),
        13 => gen_cookie::<52>(ctx, eth, ip),
        14 => gen_cookie::<56>(ctx, eth, ip),
        15 => gen_cookie::<60>(ctx, eth, ip),
        _ => None,
    };
    let Some(cookie) = cookie else {
        return (xdp_action::XDP_DROP, Reason::DropBadL4Header);
    };
    let with_mss = doff >= 6;
    let th_len = if with_mss { TCP_MSS_LEN } else { TCP_LEN };
    let mss_at = if with_mss {
        at::<[u8; TCP_MSS_LEN]>(ctx, eth, L4_OFF)
    } else {
        None
    };
    // SAFETY: every pointer bounds-checked above.
    unsafe {
        let seq = u32::from_be_bytes([(*tcp)[4], (*tcp)[5], (*tcp)[6], (*tcp)[7]]);
        answer(
            ip,
            tcp,
            cookie,
            seq.wrapping_add(1),
            th_len,
            TCP_FLAG_SYN | TCP_FLAG_ACK,
        );
        if let Some(m) = mss_at {
            (&mut *m)[20..24].copy_from_slice(&[2, 4, (OWN_MSS >> 8) as u8, OWN_MSS as u8]);
        }
    }
    finish(ctx, eth, th_len, frame_len);
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    };
    forward::go_to(ctx, eth, go, Reason::TxSynCookie)
}

/// Send the client's packet on to the backend as the SYN of the backend's
/// side: the client's ISN, its MSS, destination translated.
#[inline(always)]
fn syn_to_backend(
    ctx: &XdpContext,
    pkt: &Packet,
    backend_id: u32,
    isn_be: u32,
    mss: u16,
) -> (u32, Reason) {
    let Some(backend) = maps::BACKENDS.get(backend_id).copied() else {
        return (xdp_action::XDP_DROP, Reason::DropNoBackend);
    };
    if pkt.ttl <= 1 {
        return (xdp_action::XDP_DROP, Reason::DropTtlExceeded);
    }
    let go = match forward::decide(
        ctx,
        pkt,
        forward::to_backend_hop(ctx, pkt, backend_id, backend.addr_be),
    ) {
        Ok(g) => g,
        Err(v) => return v,
    };
    // The SYN is exactly its headers (with MSS if the frame can grow).
    let len = pkt.frame_len as i64;
    let want = (L4_OFF + TCP_MSS_LEN) as i64;
    // SAFETY: helper on our own context; packet pointers are taken afresh.
    let with_mss = unsafe { bpf_xdp_adjust_tail(ctx.ctx, (want - len) as i32) } == 0;
    if !with_mss {
        // SAFETY: as above; shrinking to the bare headers cannot fail.
        unsafe { bpf_xdp_adjust_tail(ctx.ctx, ((L4_OFF + TCP_LEN) as i64 - len) as i32) };
    }
    let th_len = if with_mss { TCP_MSS_LEN } else { TCP_LEN };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    };
    let (Some(ip), Some(tcp)) = (
        at::<Ipv4Hdr>(ctx, eth, ETH_LEN),
        at::<[u8; TCP_LEN]>(ctx, eth, L4_OFF),
    ) else {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    };
    // SAFETY: every pointer bounds-checked above.
    unsafe {
        (*ip).dst_addr = backend.addr_be.to_ne_bytes();
        (*ip).ttl = pkt.ttl - 1;
        let t = &mut *tcp;
        t[2..4].copy_from_slice(&backend.port_be.to_ne_bytes());
        t[4..8].copy_from_slice(&isn_be.to_ne_bytes());
        t[8..12].copy_from_slice(&[0; 4]);
        t[12] = ((th_len / 4) as u8) << 4;
        t[13] = TCP_FLAG_SYN;
        t[18..20].copy_from_slice(&[0, 0]);
        if with_mss && let Some(m) = at::<[u8; TCP_MSS_LEN]>(ctx, eth, L4_OFF) {
            (&mut *m)[20..24].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
        }
    }
    // (Exactly its size already: `finish` resizes nothing.)
    finish(ctx, eth, th_len, (L4_OFF + th_len) as u64);
    forward::go_to(ctx, eth, go, Reason::FwdCookieSyn)
}

/// A backend packet of a cookie connection the main program handed over:
/// its SYN-ACK (the first completes the connection; any is answered with
/// the ACK), a RST before it (passed to the client at the sequence number
/// it expects), anything else before it (dropped).
#[inline(always)]
fn from_backend(ctx: &XdpContext, pkt: &Packet, rev: *mut NatReverse) -> (u32, Reason) {
    // SAFETY: a map value pointer, valid for this run.
    let (cookie_flags, delta) = unsafe { ((*rev).cookie, (*rev).seq_delta) };
    let pending = cookie_flags & COOKIE_F_PENDING != 0;
    let Some(tcp) = at::<[u8; TCP_LEN]>(ctx, pkt.eth, L4_OFF) else {
        return (xdp_action::XDP_DROP, Reason::DropTruncated);
    };
    // SAFETY: bounds-checked just above.
    let (seq, ack) = unsafe {
        let t = &*tcp;
        (
            u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        )
    };
    let f = pkt.tcp_flags;
    if f & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK {
        if pending {
            // `delta` still holds the cookie: the backend's ISN minus it is
            // what the backend's sequence numbers lose from now on.
            complete(pkt, rev, seq.wrapping_sub(delta));
        }
        return sent_back(ack_backend(ctx, pkt, seq, ack));
    }
    if !pending {
        // (The main program translates established connections itself.)
        return (xdp_action::XDP_DROP, Reason::DropCookiePending);
    }
    if f & TCP_FLAG_RST == 0 {
        return (xdp_action::XDP_DROP, Reason::DropCookiePending);
    }
    // The backend refused: the client, whose side is open, gets the RST at
    // the sequence number after the cookie (`nat::reverse` sets it).
    let _ = nat::track_reply(ctx, pkt, &unsafe { *rev });
    // SAFETY: the entry's own next-hop field.
    let hop = unsafe { core::ptr::addr_of_mut!((*rev).hop) };
    nat::reverse_as::<true>(ctx, pkt, &unsafe { *rev }, hop)
}

/// The backend answered: store the sequence offset in both entries, and
/// promote the connection out of the half-open tables.
#[inline(never)]
fn complete(pkt: &Packet, rev: *mut NatReverse, delta: u32) {
    // SAFETY: a map value pointer, valid for this run.
    let (vip_be, vport_be) = unsafe {
        (*rev).seq_delta = delta;
        (*rev).cookie = COOKIE_F_ON;
        ((*rev).vip_be, (*rev).vport_be)
    };
    let mut key = FlowKey {
        src_be: pkt.dst_be,
        dst_be: vip_be,
        sport_be: pkt.dport_be,
        dport_be: vport_be,
        proto: PROTO_TCP,
        _pad: [0; 3],
    };
    if let Some(v) = maps::EMBRYOS.get_ptr_mut(key) {
        // SAFETY: as above.
        unsafe {
            (*v).seq_delta = delta;
            (*v).cookie = COOKIE_F_ON;
            (*v).flags |= FLOW_F_REPLIED;
        }
        sched::promote_key(&mut key, v, true);
    } else if let Some(v) = maps::FLOWS.get_ptr_mut(key) {
        // SAFETY: as above.
        unsafe {
            (*v).seq_delta = delta;
            (*v).cookie = COOKIE_F_ON;
        }
    }
}

/// Turn the backend's SYN-ACK into the ACK that completes its side and send
/// it straight back. (Inlined, as `answer_syn`.)
#[inline(always)]
fn ack_backend(ctx: &XdpContext, pkt: &Packet, seq: u32, ack: u32) -> Reason {
    let (eth, frame_len) = (pkt.eth, pkt.frame_len);
    let (Some(ip), Some(tcp)) = (
        at::<Ipv4Hdr>(ctx, eth, ETH_LEN),
        at::<[u8; TCP_LEN]>(ctx, eth, L4_OFF),
    ) else {
        return Reason::DropTruncated;
    };
    // SAFETY: every pointer bounds-checked above.
    unsafe {
        swap_macs(eth);
        answer(ip, tcp, ack, seq.wrapping_add(1), TCP_LEN, TCP_FLAG_ACK);
    }
    finish(ctx, eth, TCP_LEN, frame_len);
    Reason::TxCookieAck
}

/// The verdict of a packet built to go back out where it came from (the
/// builders return only their reason: a tuple return, passed through
/// memory, left a stack pointer in R0, which the verifier refuses).
#[inline(always)]
fn sent_back(reason: Reason) -> (u32, Reason) {
    match reason {
        Reason::TxCookieAck => (xdp_action::XDP_TX, reason),
        _ => (xdp_action::XDP_DROP, reason),
    }
}

/// Turn the packet's headers into the LB's answer to its sender:
/// addresses and ports swapped, TTL 64, these sequence and acknowledgement
/// numbers, header length and flags, the window at its unscaled most (no
/// window scaling is negotiated), no urgent pointer. Checksums and length
/// are `finish`'s.
///
/// # Safety
/// `ip` and `tcp` must point at the frame's IPv4 and TCP headers.
#[inline(always)]
unsafe fn answer(
    ip: *mut Ipv4Hdr,
    tcp: *mut [u8; TCP_LEN],
    seq: u32,
    ack: u32,
    th_len: usize,
    flags: u8,
) {
    // SAFETY: the caller's promise.
    unsafe {
        let (src, dst) = ((*ip).src_addr, (*ip).dst_addr);
        (*ip).src_addr = dst;
        (*ip).dst_addr = src;
        (*ip).ttl = 64;
        let t = &mut *tcp;
        let ports = [t[0], t[1], t[2], t[3]];
        t[0..2].copy_from_slice(&ports[2..4]);
        t[2..4].copy_from_slice(&ports[0..2]);
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = ((th_len / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        t[18..20].copy_from_slice(&[0, 0]);
    }
}

/// # Safety
/// `eth` must point at the frame's Ethernet header.
#[inline(always)]
unsafe fn swap_macs(eth: *mut EthHdr) {
    // SAFETY: the caller's promise.
    unsafe {
        let (src, dst) = ((*eth).src_addr, (*eth).dst_addr);
        (*eth).src_addr = dst;
        (*eth).dst_addr = src;
    }
}

/// Make the frame (now `frame_len` bytes) exactly an IPv4 header and a TCP
/// header of `th_len` bytes: total length and both checksums computed
/// whole, then the tail cut. (The length comes from the parser: LLVM turns
/// a length computed here from the packet pointers into shifts of a
/// pointer, which the verifier refuses.)
#[inline(always)]
fn finish(ctx: &XdpContext, eth: *mut EthHdr, th_len: usize, frame_len: u64) {
    let Some(ip) = at::<[u8; 20]>(ctx, eth, ETH_LEN) else {
        return;
    };
    // SAFETY: bounds-checked just above.
    let (src, dst) = unsafe {
        let h = &mut *ip;
        h[2..4].copy_from_slice(&((20 + th_len) as u16).to_be_bytes());
        h[6..8].copy_from_slice(&IP_DF_BE);
        h[10..12].copy_from_slice(&[0, 0]);
        let words = core::ptr::read_unaligned(ip as *const [u16; 10]);
        let c = !csum::sum_words(&words);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        (
            u32::from_ne_bytes([h[12], h[13], h[14], h[15]]),
            u32::from_ne_bytes([h[16], h[17], h[18], h[19]]),
        )
    };
    // Pseudo-header: addresses, protocol, TCP length.
    let sum = (src & 0xffff)
        + (src >> 16)
        + (dst & 0xffff)
        + (dst >> 16)
        + u16::from_ne_bytes([0, PROTO_TCP]) as u32
        + u16::from_ne_bytes((th_len as u16).to_be_bytes()) as u32;
    if th_len == TCP_MSS_LEN {
        set_tcp_checksum::<{ TCP_MSS_LEN / 2 }>(ctx, eth, sum);
    } else {
        set_tcp_checksum::<{ TCP_LEN / 2 }>(ctx, eth, sum);
    }
    let want = (L4_OFF + th_len) as u64;
    if frame_len > want {
        // SAFETY: shrinking our own frame; nothing holds its pointers after.
        unsafe { bpf_xdp_adjust_tail(ctx.ctx, (want as i64 - frame_len as i64) as i32) };
    }
}

/// Write the checksum of the `2 * W`-byte TCP header, `pseudo` being the
/// pseudo-header's (unfolded) sum.
#[inline(always)]
fn set_tcp_checksum<const W: usize>(ctx: &XdpContext, eth: *mut EthHdr, pseudo: u32) {
    let Some(t) = at::<[u16; W]>(ctx, eth, L4_OFF) else {
        return;
    };
    // SAFETY: bounds-checked just above; W >= 10 (the checksum is word 8).
    unsafe {
        (*t)[8] = 0;
        let words = core::ptr::read_unaligned(t);
        let mut sum = pseudo;
        let mut i = 0;
        while i < W {
            sum += words[i] as u32;
            i += 1;
        }
        (*t)[8] = !csum::fold(sum);
    }
}
