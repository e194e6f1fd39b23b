//! ICMP errors the data path sends straight back to a packet's sender
//! (XDP_TX): "fragmentation needed" (type 3, code 4) for packets larger than
//! the egress MTU with DF set, and "time exceeded" (type 11, code 0) for
//! NAT packets whose TTL runs out here.
//!
//! The kernel cannot do this for us: it never sees the packet as the sender
//! addressed it, so an ICMP it made would quote a header (after NAT) the
//! sender cannot match, and path-MTU discovery would break. The reply comes
//! from the packet's destination (a VIP, or the client for a NAT reply) and
//! quotes the IPv4 header and the first 8 bytes of L4 (RFC 792), enough for
//! TCP and UDP to find the socket.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Reason, csum};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::parse::{ETH_LEN, IPV4_LEN, ptr_at};

const ICMP_LEN: usize = 8;
/// Quoted part of the offending packet: its IPv4 header and 8 bytes of L4.
const QUOTE_LEN: usize = IPV4_LEN + 8;
/// Bytes put in front of the original frame: a new IPv4 and ICMP header.
const GROW: usize = IPV4_LEN + ICMP_LEN;
/// The reply: Ethernet, IPv4, ICMP, quote.
const REPLY_LEN: usize = ETH_LEN + GROW + QUOTE_LEN;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_TTL_EXCEEDED_IN_TRANSIT: u8 = 0;
const PROTO_ICMP: u8 = 1;
/// Precedence "internetwork control", as the kernel's ICMP errors carry.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// Turn the frame into an ICMP "fragmentation needed, next-hop MTU `mtu`"
/// addressed to its sender, and bounce it out of the ingress interface.
/// The parser guaranteed an IPv4 header without options and at least 8
/// bytes of L4 inside the frame. A cold path: kept out of line (a BPF
/// subprogram) so the per-packet code stays small.
#[inline(never)]
pub fn frag_needed(ctx: &XdpContext, mtu: u16) -> (u32, Reason) {
    match error(ctx, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu) {
        true => (xdp_action::XDP_TX, Reason::TxIcmpFragNeeded),
        false => (xdp_action::XDP_DROP, Reason::DropTtlExceeded),
    }
}

/// Turn the frame into an ICMP "time exceeded in transit" to its sender
/// (same shape and source as above). If that cannot be done the packet is
/// dropped (its TTL ran out anyway).
#[inline(never)]
pub fn time_exceeded(ctx: &XdpContext) -> (u32, Reason) {
    match error(ctx, ICMP_TIME_EXCEEDED, ICMP_TTL_EXCEEDED_IN_TRANSIT, 0) {
        true => (xdp_action::XDP_TX, Reason::TxIcmpTimeExceeded),
        false => (xdp_action::XDP_DROP, Reason::DropTtlExceeded),
    }
}

/// Rewrite the frame into an ICMP error of `icmp_type`/`code` (the last
/// 16 bits of its header: `mtu`) to the sender; false if it could not.
#[inline(always)]
fn error(ctx: &XdpContext, icmp_type: u8, code: u8, mtu: u16) -> bool {
    let drop = false;
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)) else {
        return drop;
    };
    // SAFETY: both headers were bounds-checked just above.
    let (sender_mac, our_mac, sender, receiver) = unsafe {
        (
            (*eth).src_addr,
            (*eth).dst_addr,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let old_len = (ctx.data_end() - ctx.data()) as i32;
    // Make room in front: the original frame's IPv4 header then starts right
    // where the quote belongs (after the new Ethernet, IPv4 and ICMP headers).
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROW as i32)) } != 0 {
        return drop;
    }
    // Cut everything after the quote.
    let shrink = REPLY_LEN as i32 - (old_len + GROW as i32);
    // SAFETY: as above; the frame only shrinks.
    if shrink < 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, shrink) } != 0 {
        return drop;
    }
    let (Some(head), Some(quote)) = (
        ptr_at::<[u8; ETH_LEN + GROW]>(ctx, 0),
        ptr_at::<[u16; QUOTE_LEN / 2]>(ctx, ETH_LEN + GROW),
    ) else {
        return drop;
    };

    // Written straight into the frame (a local copy of the headers would
    // take this subprogram's stack, which adds to the main program's within
    // one 512-byte limit).
    let h = head.cast::<u8>();
    // SAFETY: `head` covers ETH_LEN + GROW bytes, bounds-checked above;
    // every offset below is a constant inside it.
    unsafe {
        core::ptr::write_bytes(h, 0, ETH_LEN + GROW);
        core::ptr::copy_nonoverlapping(sender_mac.as_ptr(), h, 6);
        core::ptr::copy_nonoverlapping(our_mac.as_ptr(), h.add(6), 6);
        put(h, 12, &0x0800u16.to_be_bytes());
        // IPv4: no options, no fragmentation, TTL 64.
        let ip_off = ETH_LEN;
        *h.add(ip_off) = 0x45;
        *h.add(ip_off + 1) = TOS_INTERNETWORK_CONTROL;
        put(h, ip_off + 2, &((GROW + QUOTE_LEN) as u16).to_be_bytes());
        *h.add(ip_off + 8) = 64;
        *h.add(ip_off + 9) = PROTO_ICMP;
        core::ptr::copy_nonoverlapping(receiver.as_ptr(), h.add(ip_off + 12), 4);
        core::ptr::copy_nonoverlapping(sender.as_ptr(), h.add(ip_off + 16), 4);
        let ip_check = !csum::fold(sum_at(h, ip_off, IPV4_LEN / 2));
        put(h, ip_off + 10, &ip_check.to_ne_bytes());
        // ICMP header: type, code, checksum, unused, next-hop MTU.
        let icmp_off = ETH_LEN + IPV4_LEN;
        *h.add(icmp_off) = icmp_type;
        *h.add(icmp_off + 1) = code;
        put(h, icmp_off + 6, &mtu.to_be_bytes());
        // The quote is summed where it lies, like the headers.
        let sum = sum_at(h, icmp_off, ICMP_LEN / 2) + sum_at(quote.cast(), 0, QUOTE_LEN / 2);
        put(h, icmp_off + 2, &(!csum::fold(sum)).to_ne_bytes());
    }
    true
}

/// Answer an ICMP echo request (the parser found one, 8-byte ICMP header
/// inside the datagram) from the address it was sent to: addresses and MACs
/// swapped, TTL 64, type 0; checksums updated incrementally, so a request
/// that arrived with a bad ICMP checksum gets a reply with one (and is
/// dropped by its sender).
/// The pointers are the parser's, bounds-checked there.
#[inline(always)]
pub fn echo_reply(eth: *mut EthHdr, ip: *mut Ipv4Hdr, icmp: *mut [u8; 4]) -> (u32, Reason) {
    // SAFETY: all three were bounds-checked by the parser.
    unsafe {
        let words = core::ptr::read_unaligned(ip as *const [u16; 10]);
        if !csum::ipv4_header_ok(&words) {
            return (xdp_action::XDP_DROP, Reason::DropBadIpChecksum);
        }
        let (src, dst) = ((*eth).src_addr, (*eth).dst_addr);
        (*eth).src_addr = dst;
        (*eth).dst_addr = src;
        let (src, dst) = ((*ip).src_addr, (*ip).dst_addr);
        (*ip).src_addr = dst;
        (*ip).dst_addr = src;
        let (ttl, proto) = ((*ip).ttl, (*ip).proto);
        (*ip).ttl = 64;
        let check = csum::replace2(
            u16::from_ne_bytes((*ip).check),
            u16::from_ne_bytes([ttl, proto]),
            u16::from_ne_bytes([64, proto]),
        );
        (*ip).check = check.to_ne_bytes();
        let h = *icmp;
        let check = csum::replace2(
            u16::from_ne_bytes([h[2], h[3]]),
            u16::from_ne_bytes([h[0], h[1]]),
            u16::from_ne_bytes([ICMP_ECHO_REPLY, h[1]]),
        )
        .to_ne_bytes();
        *icmp = [ICMP_ECHO_REPLY, h[1], check[0], check[1]];
    }
    (xdp_action::XDP_TX, Reason::TxIcmpEchoReply)
}

/// Write two bytes at `off`.
///
/// # Safety
/// `p + off .. p + off + 2` must be inside the frame.
#[inline(always)]
unsafe fn put(p: *mut u8, off: usize, b: &[u8; 2]) {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), p.add(off), 2) };
}

/// One's-complement sum (unfolded) of `n` 16-bit words from `p + off`, as
/// they sit in the frame.
///
/// # Safety
/// `p + off .. p + off + 2n` must be inside the frame.
#[inline(always)]
unsafe fn sum_at(p: *const u8, off: usize, n: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < n {
        // SAFETY: the caller's promise.
        sum += unsafe { core::ptr::read_unaligned(p.add(off + 2 * i).cast::<u16>()) } as u32;
        i += 1;
    }
    sum
}
