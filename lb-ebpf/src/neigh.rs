//! Packets whose next hop's MAC is unknown: the XDP program cannot send
//! them, and the kernel's IP stack must not see them as they are (a NAT
//! reply already carries the VIP as its source, which the kernel drops as a
//! martian when the VIP is a local address; a DSR packet is addressed to the
//! VIP). So XDP passes them with their next hop in XDP metadata, and a
//! tc-ingress program on the same interface hands them to
//! `bpf_redirect_neigh`: the kernel queues the packet, resolves the
//! neighbour (ARP) and sends it. The resolved entry then serves the XDP fast
//! path. Without metadata support in the driver, or without the tc program,
//! the packet reaches the IP stack as before.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_UNSPEC, bpf_redir_neigh},
    helpers::generated::{bpf_redirect_neigh, bpf_xdp_adjust_meta},
    macros::classifier,
    programs::{TcContext, XdpContext},
};
use lb_common::{NEIGH_META_MAGIC, NeighMeta};

const AF_INET: u32 = 2;
// The bindings give TC_ACT_REDIRECT as u32 on some targets and i32 on others.
#[allow(clippy::unnecessary_cast)]
const REDIRECT: i32 = TC_ACT_REDIRECT as i32;
const META_LEN: usize = core::mem::size_of::<NeighMeta>();

/// Put the next hop in front of the packet as XDP metadata. Best effort: a
/// driver without metadata support leaves the packet to the IP stack.
#[inline(always)]
pub fn mark(ctx: &XdpContext, ifindex: u32, next_hop_be: u32) {
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META_LEN as i32)) } != 0 {
        return;
    }
    let meta = ctx.metadata();
    // The verifier wants the metadata's end checked against the packet start.
    if meta + META_LEN > ctx.data() {
        return;
    }
    // SAFETY: bounds-checked just above.
    unsafe {
        core::ptr::write_unaligned(
            meta as *mut NeighMeta,
            NeighMeta {
                magic: NEIGH_META_MAGIC,
                ifindex,
                next_hop_be,
            },
        )
    };
}

/// tc ingress: send a packet the XDP program marked through the kernel's
/// neighbour resolution; leave everything else alone (TCX "next").
#[classifier]
pub fn xdplb_neigh(ctx: TcContext) -> i32 {
    // SAFETY: reading the context's packet pointers.
    let (meta, data) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).data_meta as usize, (*skb).data as usize)
    };
    if meta + META_LEN > data {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: bounds-checked just above.
    let m = unsafe { core::ptr::read_unaligned(meta as *const NeighMeta) };
    if m.magic != NEIGH_META_MAGIC {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: plain-old-data struct; all-zero is valid.
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = AF_INET;
    nh.__bindgen_anon_1.ipv4_nh = m.next_hop_be;
    // SAFETY: `nh` is a valid, correctly sized struct on our stack.
    let rc = unsafe {
        bpf_redirect_neigh(
            m.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        )
    };
    if rc == REDIRECT as i64 {
        REDIRECT
    } else {
        TC_ACT_UNSPEC
    }
}
