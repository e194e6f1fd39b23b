//! Sending a packet on: next hop from the kernel FIB, then TX or redirect.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action},
    helpers::generated::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{Backend, Reason};

use crate::parse::Packet;

const AF_INET: u8 = 2;

/// Where the kernel would send a packet to `dst_be`.
pub enum NextHop {
    Found {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Route known, neighbour not resolved (yet).
    NoNeighbour,
    Failed,
}

#[inline(always)]
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
        },
        BPF_FIB_LKUP_RET_NO_NEIGH => NextHop::NoNeighbour,
        _ => NextHop::Failed,
    }
}

/// Rewrite the Ethernet addresses and send out of `ifindex`.
#[inline(always)]
pub fn transmit(ctx: &XdpContext, pkt: &Packet, ifindex: u32, smac: [u8; 6], dmac: [u8; 6]) -> u32 {
    // SAFETY: `pkt.eth` was bounds-checked by the parser.
    unsafe {
        (*pkt.eth).src_addr = smac;
        (*pkt.eth).dst_addr = dmac;
    }
    if ifindex == ctx.ingress_ifindex() as u32 {
        xdp_action::XDP_TX
    } else {
        // SAFETY: helper call with plain integers.
        unsafe { bpf_redirect(ifindex, 0) as u32 }
    }
}

/// Send the packet as is (VIP still the destination) to the backend's MAC.
/// The backend holds the VIP and answers the client directly.
#[inline(always)]
pub fn dsr(ctx: &XdpContext, pkt: &Packet, backend: &Backend) -> (u32, Reason) {
    match next_hop(ctx, pkt, pkt.src_be, backend.addr_be) {
        NextHop::Found {
            ifindex,
            smac,
            dmac,
        } => (transmit(ctx, pkt, ifindex, smac, dmac), Reason::FwdDsr),
        // The daemon keeps backend neighbours resolved (managed entries);
        // until then the kernel gets the packet.
        NextHop::NoNeighbour => (xdp_action::XDP_PASS, Reason::PassNoNeighbour),
        NextHop::Failed => (xdp_action::XDP_PASS, Reason::PassFibFailed),
    }
}
