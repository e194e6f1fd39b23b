//! The client side of a NAT connection as its backend sees it: one client
//! address and port may reach one backend through two VIPs, and the
//! backend cannot tell the two connections apart. A new NAT connection
//! checks here before it is given a backend (the scheduler asks; the NAT
//! rewrite and the reply tables are `nat`'s).

use lb_common::{FLOW_F_CLOSING, FLOW_F_REFUSED, FlowKey};

use crate::{
    maps::{EMBRYO_REVERSE, EMBRYOS, FLOWS, NAT_REVERSE},
    parse::Packet,
};

/// Whether backend `addr_be:port_be` already holds a live connection with
/// this client address and port that came in through another VIP or port
/// (two VIPs sharing a backend). The backend would see both connections as
/// one 4-tuple, and the newer reply entry would translate the older
/// connection's replies as its own (issue 20: the first connection hung
/// silently). Live: its flow entry (half-open or established) is still on
/// that backend, not closing and not refused; a closed one's entry is
/// simply replaced.
///
/// A reply entry lives in one of the two reply tables, its flow in one of
/// the two flow tables: one lookup in each reply table per new NAT
/// connection (both miss, usually; the established table's serves the
/// old-reply clean-up too), the flow tables only when an entry of another
/// VIP is there. Out of line: off the main program's stack.
#[inline(never)]
pub fn tuple_taken(pkt: &Packet, addr_be: u32, port_be: u16) -> bool {
    let mut key = FlowKey {
        src_be: addr_be,
        dst_be: pkt.src_be,
        sport_be: port_be,
        dport_be: pkt.sport_be,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    // SAFETY: map values are read at once.
    let found = unsafe {
        match NAT_REVERSE.get(key) {
            Some(r) => Some((r.vip_be, r.vport_be, r.backend_id, true)),
            None => EMBRYO_REVERSE
                .get(key)
                .map(|r| (r.vip_be, r.vport_be, r.backend_id, false)),
        }
    };
    let Some((vip_be, vport_be, backend_id, established)) = found else {
        return false;
    };
    let live = (vip_be != pkt.dst_be || vport_be != pkt.dport_be) && {
        // The other connection's flow key, in the same stack slot.
        key.src_be = pkt.src_be;
        key.dst_be = vip_be;
        key.sport_be = pkt.sport_be;
        key.dport_be = vport_be;
        // SAFETY: as above.
        let flags = unsafe {
            match FLOWS.get(key) {
                Some(f) if f.backend_id == backend_id => Some(f.flags),
                Some(_) => None,
                None => match EMBRYOS.get(key) {
                    Some(f) if f.backend_id == backend_id => Some(f.flags),
                    _ => None,
                },
            }
        };
        flags.is_some_and(|f| f & (FLOW_F_CLOSING | FLOW_F_REFUSED) == 0)
    };
    if live {
        return true;
    }
    // Free: this VIP's own 4-tuple reused, or a connection that is over.
    // An established reply entry under the key would be found before the
    // new connection's half-open one: gone now (what `forget_reply` does
    // on the other paths; done here, the lookup above serves both).
    if established {
        key.src_be = addr_be;
        key.dst_be = pkt.src_be;
        key.sport_be = port_be;
        key.dport_be = pkt.sport_be;
        let _ = NAT_REVERSE.remove(key);
    }
    false
}
