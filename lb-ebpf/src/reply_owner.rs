//! Replies of NAT connections that have no reply entry (issue 21: one table
//! insert per connection). A backend whose address, port and protocol
//! belong to one NAT service alone (`BACKEND_F_SOLE_REPLY`) names, through
//! `REPLY_OWNERS`, the service whose VIP and port its replies come from;
//! the client's flow entry under that key proves the connection (it is on
//! this backend, not a SYN-cookie one, not picked up unverified) and the
//! reply is translated from it. Everything else (backends two services
//! share, SYN-cookie connections, pick-ups, flows synced under another
//! layout) keeps its reply entry and is found there.
//!
//! The translation is assembled in a per-CPU slot chosen by the client's
//! address, which also caches the next hop towards that client, as a reply
//! entry caches it for its connection.

use lb_common::{
    BACKEND_F_SOLE_REPLY, FLOW_F_UNVERIFIED, FlowKey, Forwarding, NatReverse, PROTO_TCP,
    REPLY_SLOTS as SLOT_COUNT, ReplyOwnerKey,
};

use crate::maps::{self, BACKENDS, FLOWS, REPLY_OWNERS, REPLY_SLOTS, SERVICE_SLOTS};

/// Whether backend `id`'s replies are found by the client's flow entry
/// (`BACKEND_F_SOLE_REPLY`): a new connection to it writes no reply entry.
/// Out of line: the main program has no stack to spare for the lookup.
#[inline(never)]
pub fn sole(id: u32) -> bool {
    BACKENDS
        .get(id)
        .is_some_and(|b| b.flags & BACKEND_F_SOLE_REPLY != 0)
}

/// How a backend's reply `key` (backend -> client) is translated: from its
/// client's flow entry, else its reply entry (TCP: established, then
/// half-open).
#[inline(always)]
pub fn find(key: FlowKey) -> Option<*mut NatReverse> {
    let r = lookup(
        key.src_be,
        key.dst_be,
        key.sport_be,
        key.dport_be,
        key.proto,
    );
    (!r.is_null()).then_some(r)
}

/// [`find`] by the key's fields (null: none). Out of line (a BPF
/// subprogram): its keys stay off the main program's stack, which has
/// little room left.
#[inline(never)]
fn lookup(
    backend_be: u32,
    client_be: u32,
    bport_be: u16,
    cport_be: u16,
    proto: u8,
) -> *mut NatReverse {
    let r = from_flow(backend_be, client_be, bport_be, cport_be, proto);
    if !r.is_null() {
        return r;
    }
    let key = FlowKey {
        src_be: backend_be,
        dst_be: client_be,
        sport_be: bport_be,
        dport_be: cport_be,
        proto,
        _pad: [0; 3],
    };
    maps::nat_reverse(key, proto == PROTO_TCP).unwrap_or_default()
}

/// The reply's translation from its client's flow entry, in this CPU's
/// slot for the client (null: none).
#[inline(always)]
fn from_flow(
    backend_be: u32,
    client_be: u32,
    bport_be: u16,
    cport_be: u16,
    proto: u8,
) -> *mut NatReverse {
    let none = core::ptr::null_mut();
    let owner = ReplyOwnerKey {
        addr_be: backend_be,
        port_be: bport_be,
        proto,
        _pad: 0,
    };
    // SAFETY: read at once.
    let Some(id) = (unsafe { REPLY_OWNERS.get(owner) }).copied() else {
        return none;
    };
    let Some(service_id) = BACKENDS.get(id).map(|b| b.service_id) else {
        return none;
    };
    let Some(slot) = SERVICE_SLOTS.get(service_id) else {
        return none;
    };
    if slot.info.forwarding != Forwarding::Nat as u8
        || slot.info.id != service_id
        || slot.key.proto != proto
    {
        return none;
    }
    let (vip_be, vport_be, service_flags) = (slot.key.vip_be, slot.key.port_be, slot.info.flags);
    let key = FlowKey {
        src_be: client_be,
        dst_be: vip_be,
        sport_be: cport_be,
        dport_be: vport_be,
        proto,
        _pad: [0; 3],
    };
    let flow = if proto == PROTO_TCP {
        maps::any_flow(key)
    } else {
        FLOWS.get_ptr_mut(key)
    };
    let Some(f) = flow else {
        return none;
    };
    // SAFETY: a map value pointer, read at once.
    let (backend_id, flags, cookie) = unsafe { ((*f).backend_id, (*f).flags, (*f).cookie) };
    if backend_id != id || cookie != 0 || flags & FLOW_F_UNVERIFIED != 0 {
        return none;
    }
    // Fibonacci hashing of the address: inline (a call would stack another
    // frame on the main program's).
    let Some(s) =
        REPLY_SLOTS.get_ptr_mut(client_be.wrapping_mul(0x9e37_79b1) >> 22 & (SLOT_COUNT - 1))
    else {
        return none;
    };
    // SAFETY: a per-CPU map value pointer: this CPU's alone while the
    // program runs. Written field by field (a whole-struct copy would take
    // its size of stack).
    unsafe {
        if (*s).client_be != client_be {
            (*s).client_be = client_be;
            (*s).rev.hop.mtu = 0; // another client's next hop: not ours
        }
        let r = core::ptr::addr_of_mut!((*s).rev);
        (*r).vip_be = vip_be;
        (*r).vport_be = vport_be;
        (*r).service_flags = service_flags;
        (*r).cookie = 0;
        (*r).service_id = service_id;
        (*r).backend_id = id;
        (*r).seq_delta = 0;
        r
    }
}
