//! Sending a packet on: next hop from the kernel FIB (or the copy of its
//! answer cached per backend, per CPU, or per NAT flow), then TX or redirect.
//!
//! The next hop is decided *before* any rewrite, so a packet that cannot be
//! sent (no route, too big) is still the packet its sender sent: it is
//! dropped untouched, or answered with an ICMP that quotes it as sent.

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, xdp_action,
    },
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{CachedHop, Reason};

use network_types::eth::EthHdr;

use crate::{icmp, maps, neigh, parse::Packet};

const AF_INET: u8 = 2;

/// Where the kernel would send a packet from `src_be` to `dst_be`.
pub enum NextHop {
    Found {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
        /// The route's MTU (0 if the kernel did not say).
        mtu: u16,
    },
    /// Route known, neighbour not resolved (yet): out of `ifindex` via
    /// `next_hop_be`.
    NoNeighbour { ifindex: u32, next_hop_be: u32 },
    /// The packet is larger than the route's MTU.
    FragNeeded { mtu: u16 },
    /// No usable route (unreachable, blackhole, prohibit, forwarding off).
    Failed,
}

/// Out of line (a BPF subprogram): with next hops cached it is the slow
/// path, and its 64-byte lookup struct stays off the main program's stack.
#[inline(never)]
pub fn next_hop(ctx: &XdpContext, pkt: &Packet, src_be: u32, dst_be: u32) -> NextHop {
    // SAFETY: plain-old-data struct; all-zero is a valid starting point.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = pkt.proto;
    p.__bindgen_anon_1.tot_len = pkt.ip_len;
    p.__bindgen_anon_2.tos = pkt.tos;
    p.__bindgen_anon_3.ipv4_src = src_be;
    p.__bindgen_anon_4.ipv4_dst = dst_be;
    p.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: `p` is a valid, correctly sized lookup struct on our stack.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => NextHop::Found {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
            // SAFETY: a union of two u16s. On success the kernel here (6.18)
            // writes the route's MTU over the length we passed in; one that
            // leaves 0 only keeps hops from being cached (`mtu != 0` below).
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        },
        // The kernel fills in the egress interface and the next hop (gateway
        // or destination) before it looks for the neighbour.
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::NoNeighbour {
            ifindex: p.ifindex,
            // SAFETY: IPv4 lookup: the union holds the IPv4 next hop.
            next_hop_be: unsafe { p.__bindgen_anon_4.ipv4_dst },
        },
        BPF_FIB_LKUP_RET_FRAG_NEEDED => NextHop::FragNeeded {
            // SAFETY: on FRAG_NEEDED the kernel wrote the MTU into the union.
            mtu: unsafe { p.__bindgen_anon_1.mtu_result },
        },
        _ => NextHop::Failed,
    }
}

/// [`next_hop`], answered from `cache` when it holds the FIB's answer of
/// the current generation for a packet like this one (same ingress, fits
/// the MTU); otherwise asked of the FIB, and a found hop cached. The
/// generation is read before the lookup, so an answer the daemon
/// invalidates while it is being made is stored already stale.
#[inline(always)]
pub fn next_hop_via(
    ctx: &XdpContext,
    pkt: &Packet,
    src_be: u32,
    dst_be: u32,
    cache: Option<*mut CachedHop>,
) -> NextHop {
    let generation = maps::hop_generation();
    let in_ifindex = ctx.ingress_ifindex() as u32;
    if let Some(c) = cache {
        // SAFETY: a map value pointer; ours alone (per-CPU, or the flow's
        // reverse entry, written by the CPU its replies arrive on). Fields
        // are read and written one by one: a whole-struct copy would take
        // 32 bytes of the main program's stack.
        unsafe {
            if (*c).generation == generation
                && (*c).mtu != 0
                && (*c).in_ifindex == in_ifindex
                && pkt.ip_len <= (*c).mtu
            {
                return NextHop::Found {
                    ifindex: (*c).ifindex,
                    smac: (*c).smac,
                    dmac: (*c).dmac,
                    mtu: (*c).mtu,
                };
            }
        }
    }
    let hop = next_hop(ctx, pkt, src_be, dst_be);
    if let (
        Some(c),
        NextHop::Found {
            ifindex,
            smac,
            dmac,
            mtu,
        },
    ) = (cache, &hop)
        && *mtu != 0
    {
        // SAFETY: as above.
        unsafe {
            (*c).generation = generation;
            (*c).in_ifindex = in_ifindex;
            (*c).ifindex = *ifindex;
            (*c).smac = *smac;
            (*c).dmac = *dmac;
            (*c).mtu = *mtu;
        }
    }
    hop
}

/// Whether a packet carrying a NAT reply tuple (or an ICMP error about
/// one, from a router on the way) came from where its backend is: in on the interface the LB sends to that backend out of, from the
/// MAC of its next hop (the backend's own on a link, its router's behind
/// one). The answer cached for packets to the backend (this CPU's, of the
/// current generation) is compared; without one, the FIB is asked here
/// (its own lookup: a call into [`next_hop`] from here would stack two
/// subprograms on the main program's frame). Out of line (a BPF
/// subprogram): it keeps its lookup struct off the main program's stack.
#[inline(never)]
pub fn from_backend(ctx: &XdpContext, pkt: &Packet, backend_id: u32, backend_be: u32) -> bool {
    let in_ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the parser bounds-checked the Ethernet header.
    let src_mac = unsafe { (*pkt.eth).src_addr };
    let generation = maps::hop_generation();
    if let Some(c) = maps::HOP_CACHE.get_ptr(backend_id) {
        // SAFETY: a map value pointer (per-CPU); fields read one by one.
        unsafe {
            if (*c).generation == generation && (*c).mtu != 0 {
                return (*c).ifindex == in_ifindex && (*c).dmac == src_mac;
            }
        }
    }
    // SAFETY: plain-old-data struct; all-zero is a valid starting point.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.family = AF_INET;
    p.l4_protocol = pkt.proto;
    // The way to the backend from its client (no length: no MTU check).
    p.__bindgen_anon_3.ipv4_src = pkt.dst_be;
    p.__bindgen_anon_4.ipv4_dst = backend_be;
    p.ifindex = in_ifindex;
    // SAFETY: `p` is a valid, correctly sized lookup struct on our stack.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            &mut p,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => p.ifindex == in_ifindex && p.dmac == src_mac,
        // A next hop the kernel has not resolved: the interface must match.
        BPF_FIB_LKUP_RET_NO_NEIGH => p.ifindex == in_ifindex,
        _ => false,
    }
}

/// Rewrite the Ethernet addresses (`eth`: the frame's header, bounds-checked)
/// and send out of `ifindex`.
#[inline(always)]
pub fn transmit(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> u32 {
    // SAFETY: the caller's bounds-checked header.
    unsafe {
        (*eth).src_addr = smac;
        (*eth).dst_addr = dmac;
    }
    if ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: helper call with plain integers.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}

/// What to do with a packet whose next hop is known.
pub enum Go {
    /// Rewrite (NAT), then transmit with these MACs.
    Send {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Rewrite (NAT), then hand to the kernel with the next hop in XDP
    /// metadata: the tc-ingress program (`neigh.rs`) has the kernel resolve
    /// the neighbour and send the packet, so it never meets the IP stack (a
    /// translated reply's source is the VIP, a martian if the VIP is local).
    Resolve { ifindex: u32, next_hop_be: u32 },
}

/// Whether the packet can go on; if not, the final verdict, with the packet
/// still as its sender sent it (dropped, or answered with an ICMP).
#[inline(always)]
pub fn decide(ctx: &XdpContext, pkt: &Packet, hop: NextHop) -> Result<Go, (u32, Reason)> {
    match hop {
        NextHop::Found {
            ifindex,
            smac,
            dmac,
            ..
        } => Ok(Go::Send {
            ifindex,
            smac,
            dmac,
        }),
        NextHop::NoNeighbour {
            ifindex,
            next_hop_be,
        } => Ok(Go::Resolve {
            ifindex,
            next_hop_be,
        }),
        NextHop::FragNeeded { mtu } if pkt.df => Err(icmp::frag_needed(ctx, mtu)),
        NextHop::FragNeeded { .. } => Err((xdp_action::XDP_DROP, Reason::DropTooBig)),
        NextHop::Failed => Err((xdp_action::XDP_DROP, Reason::DropNoRoute)),
    }
}

/// Send a packet that [`decide`] let through (and that was rewritten).
#[inline(always)]
pub fn go(ctx: &XdpContext, pkt: &Packet, g: Go, ok: Reason) -> (u32, Reason) {
    go_to(ctx, pkt.eth, g, ok)
}

/// [`go`] for a frame whose Ethernet header is at `eth` (taken afresh after
/// the frame was resized).
#[inline(always)]
pub fn go_to(ctx: &XdpContext, eth: *mut EthHdr, go: Go, ok: Reason) -> (u32, Reason) {
    match go {
        Go::Send {
            ifindex,
            smac,
            dmac,
        } => (transmit(ctx, eth, ifindex, smac, dmac), ok),
        Go::Resolve {
            ifindex,
            next_hop_be,
        } => {
            neigh::mark(ctx, ifindex, next_hop_be);
            (xdp_action::XDP_PASS, Reason::PassNoNeighbour)
        }
    }
}

/// The next hop from a client towards backend `backend_id`, through the
/// CPU's cache for that backend.
#[inline(always)]
pub fn to_backend_hop(ctx: &XdpContext, pkt: &Packet, backend_id: u32, backend_be: u32) -> NextHop {
    let cache = maps::HOP_CACHE.get_ptr_mut(backend_id);
    next_hop_via(ctx, pkt, pkt.src_be, backend_be, cache)
}

/// DSR: only the MACs change; the backend holds the VIP itself.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, pkt: &Packet, backend_id: u32, backend_be: u32) -> (u32, Reason) {
    match decide(ctx, pkt, to_backend_hop(ctx, pkt, backend_id, backend_be)) {
        Ok(g) => go(ctx, pkt, g, Reason::FwdDsr),
        Err(v) => v,
    }
}
