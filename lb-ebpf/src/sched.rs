//! Backend choice: follow the flow table, or schedule a new flow.

use lb_common::{
    BACKEND_F_ACTIVE, Backend, FlowValue, MAX_BACKENDS, MAX_SERVICES, RING_SIZE, Scheduler,
    ServiceInfo, TCP_FLAG_ACK, TCP_FLAG_SYN, hash::flow_hash,
};

use crate::{
    maps::{BACKEND_RING, BACKENDS, FLOWS, RR_CURSOR, flow_key},
    parse::Packet,
};

#[inline(always)]
fn active_backend(id: u32) -> Option<Backend> {
    if id >= MAX_BACKENDS {
        return None;
    }
    let b = *BACKENDS.get(id)?;
    (b.flags & BACKEND_F_ACTIVE != 0).then_some(b)
}

/// Where a packet goes.
pub struct Choice {
    pub backend_id: u32,
    pub backend: Backend,
    /// The flow was scheduled by this packet.
    pub new_flow: bool,
    /// A client SYN (no ACK) on a flow already pinned to a live backend: the
    /// handshake is being retried, a passive sign the backend is not answering.
    pub syn_retransmit: bool,
}

/// The backend this packet's flow is pinned to (a new or stale flow is
/// scheduled and pinned first). `None` when the service has no backend.
#[inline(always)]
pub fn flow_backend(pkt: &Packet, svc: &ServiceInfo) -> Option<Choice> {
    let key = flow_key(pkt);
    // SAFETY: copied out at once.
    if let Some(v) = unsafe { FLOWS.get(key).copied() }
        && v.service_id == svc.id
        && let Some(b) = active_backend(v.backend_id)
    {
        return Some(Choice {
            backend_id: v.backend_id,
            backend: b,
            new_flow: false,
            syn_retransmit: pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN,
        });
    }
    let id = schedule(pkt, svc)?;
    let backend = active_backend(id)?;
    let value = FlowValue {
        backend_id: id,
        service_id: svc.id,
    };
    // An LRU insert only fails on allocation failure; the packet still goes
    // out, the next one of the flow is scheduled again.
    let _ = FLOWS.insert(key, value, 0);
    Some(Choice {
        backend_id: id,
        backend,
        new_flow: true,
        syn_retransmit: false,
    })
}

#[inline(always)]
fn schedule(pkt: &Packet, svc: &ServiceInfo) -> Option<u32> {
    if svc.ring_len == 0 || svc.ring_len > RING_SIZE || svc.id >= MAX_SERVICES {
        return None;
    }
    let slot = if svc.scheduler == Scheduler::Maglev as u8 {
        flow_hash(
            pkt.src_be,
            pkt.dst_be,
            pkt.sport_be,
            pkt.dport_be,
            pkt.proto,
        ) % svc.ring_len
    } else {
        let cursor = RR_CURSOR.get_ptr_mut(svc.id)?;
        // SAFETY: per-CPU slot of this service; nothing else writes it while we run.
        unsafe {
            let slot = *cursor % svc.ring_len;
            *cursor = if slot + 1 >= svc.ring_len {
                0
            } else {
                slot + 1
            };
            slot
        }
    };
    BACKEND_RING.get(svc.id * RING_SIZE + slot).copied()
}
