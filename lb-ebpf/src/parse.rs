//! Header parsing. All packet memory is reached through [`ptr_at`], the one
//! bounds-checked accessor the verifier needs to see.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{PROTO_TCP, PROTO_UDP, Reason};
use network_types::{
    eth::EthHdr,
    ip::Ipv4Hdr,
    tcp::{TCP_HDR_LEN, TcpHdr},
    udp::UdpHdr,
};

pub const ETH_LEN: usize = core::mem::size_of::<EthHdr>();
pub const IPV4_LEN: usize = core::mem::size_of::<Ipv4Hdr>();
/// Offset of the L4 header; IPv4 options are not forwarded, so it is fixed.
pub const L4_OFF: usize = ETH_LEN + IPV4_LEN;
const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
/// MF flag and fragment offset bits of `frag_off`.
const IP_MF_OR_OFFSET: u16 = 0x3fff;

/// Pointer to a `T` at `offset` into the frame, or `None` if the frame is too short.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// What the data path needs to know about a parsed IPv4 TCP/UDP packet.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    /// TCP flags byte (`TCP_FLAG_*`); 0 for UDP.
    pub tcp_flags: u8,
    pub tos: u8,
    /// IPv4 total length, host order (for the FIB's MTU check).
    pub ip_len: u16,
    pub frame_len: u64,
}

pub enum Parsed {
    Packet(Packet),
    /// Parsing decided the verdict already.
    Verdict(u32, Reason),
}

#[inline(always)]
fn verdict(action: u32, reason: Reason) -> Parsed {
    Parsed::Verdict(action, reason)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    use xdp_action::{XDP_DROP, XDP_PASS};
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return verdict(XDP_DROP, Reason::DropTruncated);
    };
    // SAFETY: `ptr_at` checked the header lies inside the frame.
    if unsafe { (*eth).ether_type } != ETH_P_IPV4_BE {
        return verdict(XDP_PASS, Reason::PassNotIpv4);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return verdict(XDP_DROP, Reason::DropTruncated);
    };
    // SAFETY: as above, for the IPv4 header.
    let (vihl, tot_len, frag_off, proto, tos, src_be, dst_be) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).tos,
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
        )
    };
    let ihl = (vihl & 0x0f) as usize;
    if vihl >> 4 != 4 || ihl < 5 || (tot_len as usize) < ihl * 4 {
        return verdict(XDP_DROP, Reason::DropBadIpHeader);
    }
    if ETH_LEN as u64 + tot_len as u64 > frame_len {
        return verdict(XDP_DROP, Reason::DropTruncated);
    }
    if frag_off & IP_MF_OR_OFFSET != 0 {
        return verdict(XDP_PASS, Reason::PassFragment);
    }
    if ihl != 5 {
        return verdict(XDP_PASS, Reason::PassIpOptions);
    }
    // TCP and UDP both start with source and destination port; check the
    // whole header so NAT can reach the checksum.
    let (ports, tcp_flags): (*const [u8; 4], u8) = match proto {
        PROTO_TCP => match ptr_at::<TcpHdr>(ctx, L4_OFF) {
            // SAFETY: the whole TCP header (20 bytes) is inside the frame;
            // byte 13 holds the flags.
            Some(p) => (p as *const [u8; 4], unsafe {
                (*(p as *const [u8; TCP_HDR_LEN]))[13]
            }),
            None => return verdict(XDP_DROP, Reason::DropTruncated),
        },
        PROTO_UDP => match ptr_at::<UdpHdr>(ctx, L4_OFF) {
            Some(p) => (p as *const [u8; 4], 0),
            None => return verdict(XDP_DROP, Reason::DropTruncated),
        },
        _ => return verdict(XDP_PASS, Reason::PassNotService),
    };
    // SAFETY: the L4 header (at least 8 bytes) was bounds-checked above.
    let ports = unsafe { *ports };
    Parsed::Packet(Packet {
        eth,
        ip,
        src_be,
        dst_be,
        sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
        proto,
        tcp_flags,
        tos,
        ip_len: tot_len,
        frame_len,
    })
}
