//! Header parsing. All packet memory is reached through [`ptr_at`], the one
//! bounds-checked accessor the verifier needs to see.
//!
//! Lengths are checked against the IPv4 *total length*, not only against the
//! frame: bytes after the datagram (an Ethernet trailer) are never read as
//! headers.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    FILTER_BACKENDS, FILTER_VIPS, FlowKey, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Reason, ServiceKey,
    TCP_FLAG_ACK, TCP_FLAG_SYN, csum,
};

use crate::maps;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

pub const ETH_LEN: usize = core::mem::size_of::<EthHdr>();
pub const IPV4_LEN: usize = core::mem::size_of::<Ipv4Hdr>();
/// Offset of the L4 header; IPv4 options are not forwarded, so it is fixed.
pub const L4_OFF: usize = ETH_LEN + IPV4_LEN;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ETH_P_IPV4_BE: u16 = 0x0800u16.to_be();
const ETH_P_ARP_BE: u16 = 0x0806u16.to_be();
/// ARP for IPv4 over Ethernet: htype 1, ptype 0x0800, hlen 6, plen 4, op 1
/// (request), as the first 8 bytes of the ARP header.
const ARP_REQUEST_HEAD: [u8; 8] = [0, 1, 8, 0, 6, 4, 0, 1];
/// ARP header: the 8 bytes above, sender MAC and IP, target MAC and IP.
const ARP_LEN: usize = 28;
/// MF flag and fragment offset bits of `frag_off`.
const IP_MF_OR_OFFSET: u16 = 0x3fff;
const IP_DF: u16 = 0x4000;

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
    /// TCP sequence number as on the wire; 0 for UDP.
    pub seq_be: u32,
    pub tos: u8,
    pub ttl: u8,
    /// Don't Fragment: an oversize packet gets an ICMP instead of a drop.
    pub df: bool,
    /// IPv4 total length, host order (for the FIB's MTU check).
    pub ip_len: u16,
    pub frame_len: u64,
    /// The destination is in the address filter's VIP set. (If not, the
    /// source is in its backend set: the parser passed the rest.)
    pub maybe_vip: bool,
}

impl Packet {
    /// The flow table's key of this packet (as it came: client → VIP, or
    /// backend → client for a reply).
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            src_be: self.src_be,
            dst_be: self.dst_be,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The service map's key of the address and port it is sent to.
    #[inline(always)]
    pub fn service_key(&self) -> ServiceKey {
        ServiceKey {
            vip_be: self.dst_be,
            port_be: self.dport_be,
            proto: self.proto,
            _pad: 0,
        }
    }

    pub fn is_tcp(&self) -> bool {
        self.proto == PROTO_TCP
    }

    /// A connection-opening SYN (SYN without ACK).
    pub fn is_syn(&self) -> bool {
        self.is_tcp() && self.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }

    /// Whether the IPv4 header checksum is right. Checked only for packets
    /// the LB acts on (forwards, translates), not for what it passes.
    #[inline(always)]
    pub fn ip_checksum_ok(&self) -> bool {
        // SAFETY: the 20-byte header was bounds-checked by the parser.
        let words = unsafe { core::ptr::read_unaligned(self.ip as *const [u16; 10]) };
        csum::ipv4_header_ok(&words)
    }
}

const ICMP_HEADER_LEN: usize = 8;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// What an ICMP error quotes at least: an IPv4 header and 8 bytes of L4.
pub const QUOTE_LEN: usize = IPV4_LEN + 8;

pub enum Parsed {
    Packet(Packet),
    /// Parsing decided the verdict already.
    Verdict(u32, Reason),
    /// IPv4 the data path does not forward (a fragment, IP options, a
    /// protocol other than TCP/UDP): for the kernel, unless it is addressed
    /// to a VIP (see `VIP_F_DROP_UNSERVED`).
    Host {
        reason: Reason,
        dst_be: u32,
        proto: u8,
    },
    /// An ARP request for `target_be`.
    ArpRequest {
        target_be: u32,
    },
    /// An ICMP error (destination unreachable, time exceeded) quoting an
    /// IPv4 TCP or UDP header without options: maybe about a balanced flow.
    /// `pkt` describes the outer packet (ports 0); `inner` points at the
    /// quoted IPv4 header and the 8 bytes of L4 after it.
    IcmpError {
        pkt: Packet,
        icmp: *mut [u8; 4],
        inner: *mut [u8; QUOTE_LEN],
    },
    /// An ICMP echo request (IPv4 without options or fragmentation, the
    /// 8-byte ICMP header inside the datagram) to `dst_be`.
    EchoRequest {
        dst_be: u32,
        eth: *mut EthHdr,
        ip: *mut Ipv4Hdr,
        /// Type, code, checksum.
        icmp: *mut [u8; 4],
    },
}

#[inline(always)]
fn verdict(action: u32, reason: Reason) -> Parsed {
    Parsed::Verdict(action, reason)
}

/// The TCP acknowledgement number as on the wire (the parser checked the
/// header is in the frame); 0 if it is not there.
#[inline(always)]
pub fn tcp_ack_be(ctx: &XdpContext) -> u32 {
    match ptr_at::<[u8; 4]>(ctx, L4_OFF + 8) {
        // SAFETY: bounds-checked by `ptr_at`.
        Some(a) => u32::from_ne_bytes(unsafe { *a }),
        None => 0,
    }
}

/// An ICMP error (unreachable, time exceeded) whose quoted packet went to
/// a possible backend: a router between the LB and a backend answering a
/// NAT flow's packet. Only ICMP pays for this look (two reads and a filter
/// bit); `tot_len`: the datagram's length, already checked against the
/// frame.
#[inline(always)]
fn quotes_a_backend(ctx: &XdpContext, tot_len: u16) -> bool {
    if (tot_len as usize) < IPV4_LEN + ICMP_HEADER_LEN + QUOTE_LEN {
        return false;
    }
    let (Some(h), Some(q)) = (
        ptr_at::<[u8; 4]>(ctx, L4_OFF),
        ptr_at::<[u8; QUOTE_LEN]>(ctx, L4_OFF + ICMP_HEADER_LEN),
    ) else {
        return false;
    };
    // SAFETY: both bounds-checked just above.
    let (t, q) = unsafe { ((*h)[0], &*q) };
    (t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED)
        && maps::may_be(
            FILTER_BACKENDS,
            u32::from_ne_bytes([q[16], q[17], q[18], q[19]]),
        )
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    use xdp_action::{XDP_DROP, XDP_PASS};
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return verdict(XDP_DROP, Reason::DropTruncated);
    };
    // SAFETY: `ptr_at` checked the header lies inside the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == ETH_P_ARP_BE
        && let Some(arp) = ptr_at::<[u8; ARP_LEN]>(ctx, ETH_LEN)
    {
        // SAFETY: the 28-byte ARP header is inside the frame.
        let arp = unsafe { *arp };
        if arp[..8] == ARP_REQUEST_HEAD {
            return Parsed::ArpRequest {
                target_be: u32::from_ne_bytes([arp[24], arp[25], arp[26], arp[27]]),
            };
        }
    }
    if ether_type != ETH_P_IPV4_BE {
        return verdict(XDP_PASS, Reason::PassNotIpv4);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN) else {
        return verdict(XDP_DROP, Reason::DropTruncated);
    };
    // SAFETY: as above, for the IPv4 header.
    let (vihl, tot_len, frag_off, proto, tos, ttl, src_be, dst_be) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).tos,
            (*ip).ttl,
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
    // The global deny list comes before anything else: one array read while
    // it is empty, an LPM lookup per IPv4 packet once it is not.
    if maps::firewall().global_entries != 0 && maps::globally_denied(src_be) {
        return verdict(XDP_DROP, Reason::DropDeniedGlobal);
    }
    let host = |reason| Parsed::Host {
        reason,
        dst_be,
        proto,
    };
    if frag_off & IP_MF_OR_OFFSET != 0 {
        return host(Reason::PassFragment);
    }
    if ihl != 5 {
        return host(Reason::PassIpOptions);
    }
    // Neither to a possible VIP nor from a possible backend: the host's
    // traffic, left to the kernel without looking further (two array reads
    // of the address filter; its L4 header is the kernel's to judge).
    let maybe_vip = maps::may_be(FILTER_VIPS, dst_be);
    if !maybe_vip
        && !maps::may_be(FILTER_BACKENDS, src_be)
        && !(proto == PROTO_ICMP && quotes_a_backend(ctx, tot_len))
    {
        return verdict(XDP_PASS, Reason::PassNotService);
    }
    // Bytes of the datagram after the IPv4 header; the L4 header must fit in
    // them (not just in the frame, which may carry a trailer).
    let l4_len = tot_len as usize - IPV4_LEN;
    // Both headers start with source and destination port; the whole header
    // is checked so NAT can reach the checksum.
    let (ports, tcp_flags, seq_be): ([u8; 4], u8, u32) = match proto {
        PROTO_TCP => {
            if l4_len < TCP_LEN {
                return verdict(XDP_DROP, Reason::DropTruncated);
            }
            let Some(h) = ptr_at::<[u8; TCP_LEN]>(ctx, L4_OFF) else {
                return verdict(XDP_DROP, Reason::DropTruncated);
            };
            // SAFETY: the 20-byte TCP header is inside the frame.
            let h = unsafe { *h };
            let header_len = (h[12] >> 4) as usize * 4;
            if header_len < TCP_LEN {
                return verdict(XDP_DROP, Reason::DropBadL4Header);
            }
            if header_len > l4_len {
                return verdict(XDP_DROP, Reason::DropTruncated);
            }
            (
                [h[0], h[1], h[2], h[3]],
                h[13],
                u32::from_ne_bytes([h[4], h[5], h[6], h[7]]),
            )
        }
        PROTO_UDP => {
            if l4_len < UDP_LEN {
                return verdict(XDP_DROP, Reason::DropTruncated);
            }
            let Some(h) = ptr_at::<[u8; UDP_LEN]>(ctx, L4_OFF) else {
                return verdict(XDP_DROP, Reason::DropTruncated);
            };
            // SAFETY: the 8-byte UDP header is inside the frame.
            let h = unsafe { *h };
            let udp_len = u16::from_be_bytes([h[4], h[5]]) as usize;
            if udp_len < UDP_LEN {
                return verdict(XDP_DROP, Reason::DropBadL4Header);
            }
            // Shorter than the datagram is padding the kernel trims; longer
            // means the datagram was cut.
            if udp_len > l4_len {
                return verdict(XDP_DROP, Reason::DropTruncated);
            }
            ([h[0], h[1], h[2], h[3]], 0, 0)
        }
        PROTO_ICMP if l4_len >= ICMP_HEADER_LEN => {
            let Some(h) = ptr_at::<[u8; 4]>(ctx, L4_OFF) else {
                return verdict(XDP_DROP, Reason::DropTruncated);
            };
            // SAFETY: bounds-checked just above.
            let (t, code) = unsafe { ((*h)[0], (*h)[1]) };
            if (t, code) == (ICMP_ECHO_REQUEST, 0) {
                return Parsed::EchoRequest {
                    dst_be,
                    eth,
                    ip,
                    icmp: h,
                };
            }
            if (t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED)
                && l4_len >= ICMP_HEADER_LEN + QUOTE_LEN
                && let Some(inner) = ptr_at::<[u8; QUOTE_LEN]>(ctx, L4_OFF + ICMP_HEADER_LEN)
            {
                // SAFETY: bounds-checked just above.
                let (vihl, inner_proto) = unsafe { ((*inner)[0], (*inner)[9]) };
                if vihl == 0x45 && (inner_proto == PROTO_TCP || inner_proto == PROTO_UDP) {
                    // Built out here, not by a closure shared with the
                    // packet below: that shape made LLVM spill half a
                    // pointer register, which the verifier refuses.
                    return Parsed::IcmpError {
                        pkt: Packet {
                            eth,
                            ip,
                            src_be,
                            dst_be,
                            sport_be: 0,
                            dport_be: 0,
                            proto,
                            tcp_flags: 0,
                            seq_be: 0,
                            tos,
                            ttl,
                            df: frag_off & IP_DF != 0,
                            ip_len: tot_len,
                            frame_len,
                            maybe_vip,
                        },
                        icmp: h,
                        inner,
                    };
                }
            }
            return host(Reason::PassNotService);
        }
        _ => return host(Reason::PassNotService),
    };
    Parsed::Packet(Packet {
        eth,
        ip,
        src_be,
        dst_be,
        sport_be: u16::from_ne_bytes([ports[0], ports[1]]),
        dport_be: u16::from_ne_bytes([ports[2], ports[3]]),
        proto,
        tcp_flags,
        seq_be,
        tos,
        ttl,
        df: frag_off & IP_DF != 0,
        ip_len: tot_len,
        frame_len,
        maybe_vip,
    })
}
