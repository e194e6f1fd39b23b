//! Whether a frame is this host's to act on at all. A switch floods
//! unicast frames for a MAC it has not learned (or whose port went down) to
//! every port, and a neighbour with a stale cache keeps sending to a MAC
//! that moved: such a frame, addressed to another host, is not ours to
//! forward. An HA BACKUP forwarding the MASTER's flooded frames duplicated
//! what the MASTER forwarded (issue 20). The frames of a peer the HA node
//! declared dead are accepted on purpose (`Settings::accept_macs`): its
//! neighbours still send to it until the new MASTER's gratuitous ARPs
//! reach them, and a switch floods them here once its port is down.
//!
//! Cost: one array read per frame (the ingress interface's MAC) and a
//! 6-byte compare; the accepted list is read only for other hosts' frames.

use aya_ebpf::programs::XdpContext;
use network_types::eth::EthHdr;

use crate::{maps, parse::ptr_at};

#[inline(always)]
pub fn addressed_here(ctx: &XdpContext) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return true; // the parser drops it as truncated
    };
    // SAFETY: bounds-checked just above.
    let dst = unsafe { (*eth).dst_addr };
    // Broadcast and multicast (the group bit) are everyone's.
    if dst[0] & 1 != 0 {
        return true;
    }
    // SAFETY: reads the context's ingress interface.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match maps::iface_mac(ifindex) {
        Some(own) if own != dst => maps::accepted_mac(&dst),
        _ => true,
    }
}
