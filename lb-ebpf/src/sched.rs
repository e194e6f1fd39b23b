//! Backend choice: follow the flow table, or schedule a new connection.
//!
//! TCP flows know which connection they are: the ISN of the SYN that opened
//! them and whether a FIN or RST was seen. A SYN on a known 4-tuple is a
//! retransmission only with the same ISN on a connection that is not
//! closing; any other SYN opens a new connection, scheduled afresh (client
//! ports repeat within seconds under load, so a 4-tuple alone says nothing).

use lb_common::{
    BACKEND_F_ACTIVE, BACKEND_F_NEW_CONNECTIONS, BACKEND_F_SOLE_REPLY, Backend, COOKIE_F_ON,
    FLOW_F_CLOSING, FLOW_F_COUNTED, FLOW_F_ESTABLISHED, FLOW_F_REDISPATCHED, FLOW_F_REFUSED,
    FLOW_F_SYN, FLOW_F_UNVERIFIED, FlowKey, FlowValue, Forwarding, MAX_BACKENDS, MAX_SERVICES,
    RING_SIZE, SERVICE_F_RATE_LIMIT, SETTINGS_F_SYNC_CLOSES, Scheduler, ServiceInfo, TCP_FLAG_ACK,
    TCP_FLAG_FIN, TCP_FLAG_RST, TCP_FLAG_SYN,
    hash::{flow_hash, fmix32, source_hash},
    ring_word,
};

use crate::{
    maps::{
        self, BACKEND_RING, BACKENDS, EMBRYO_REVERSE, EMBRYOS, FLOWS, Found, NAT_REVERSE,
        RR_CURSOR, report_flow,
    },
    parse::Packet,
};

/// least_conn: ring slots looked at for a second candidate naming another
/// backend than the first (a heavy backend fills most of the ring).
const SECOND_CANDIDATE_PROBES: u32 = 4;

/// A flow leaves its backend's least_conn count: it closed, moved or was
/// replaced. Only counted flows that have not closed are still counted.
/// (Flags and backend id by value: a reference would pin the flow copy to
/// the stack, which the main program has little of.)
#[inline(always)]
pub fn uncount(flags: u8, backend_id: u32) {
    if flags & (FLOW_F_COUNTED | FLOW_F_CLOSING) == FLOW_F_COUNTED {
        maps::add_conns(backend_id, -1);
    }
}

/// Ring slots tried after the first when the first names the backend that
/// just refused this connection (redispatch).
const REDISPATCH_PROBES: u32 = 8;

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    if id >= MAX_BACKENDS {
        return None;
    }
    BACKENDS.get(id).copied()
}

#[inline(always)]
fn active_backend(id: u32) -> Option<Backend> {
    backend(id).filter(|b| b.flags & BACKEND_F_ACTIVE != 0)
}

/// Why a packet got no backend.
pub enum Refusal {
    /// The service has none to give.
    NoBackend,
    /// A new connection over a rate limit (the reason says which).
    Limited(lb_common::Reason),
    /// NAT: every backend it could go to already has a live connection
    /// from this client address and port through another VIP.
    TupleInUse,
}

/// Where a packet goes, and what it means for the counters.
pub struct Choice {
    pub backend_id: u32,
    /// The backend's address and port (network order): all a rewrite needs.
    pub addr_be: u32,
    pub port_be: u16,
    /// The packet started a connection (a scheduled SYN; for UDP a new flow).
    pub connection: bool,
    /// A client SYN retransmitted (same ISN) on a connection pinned to a live
    /// backend: a passive sign the backend is not answering.
    pub syn_retransmit: bool,
    /// A TCP packet without SYN that found no flow.
    pub midstream: bool,
    /// The flow entry was written (new, or moved to another backend).
    pub created: bool,
    /// ... into `EMBRYOS` (a TCP connection not yet established).
    pub embryo: bool,
    /// The connection was opened with a SYN cookie: the client's
    /// acknowledgements gain `seq_delta` on the way to the backend.
    pub cookie: bool,
    pub seq_delta: u32,
}

/// Flow-state bits a client packet sets (on TCP).
#[inline(always)]
fn client_flags(pkt: &Packet) -> u8 {
    let f = pkt.tcp_flags;
    let mut bits = 0;
    if f & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 {
        bits |= FLOW_F_CLOSING;
    }
    if f & (TCP_FLAG_ACK | TCP_FLAG_SYN) == TCP_FLAG_ACK {
        bits |= FLOW_F_ESTABLISHED;
    }
    bits
}

/// The backend this packet's flow goes to; a new connection is scheduled and
/// pinned first. `found`: the packet's flow entry (`FLOWS` or `EMBRYOS`),
/// looked up by the caller; `acl_generation`: the firewall generation the
/// source was just checked at (0: not checked), stored with a new entry.
///
/// A TCP connection starts in `EMBRYOS` (its SYN, or a mid-stream packet
/// that found no flow) and moves to `FLOWS` with the client's first ACK on
/// it: spoofed SYNs, which never get that far, evict only each other.
#[inline(always)]
pub fn flow_backend(
    ctx: &aya_ebpf::programs::XdpContext,
    pkt: &Packet,
    svc: &ServiceInfo,
    found: Option<Found>,
    acl_generation: u16,
) -> Result<Choice, Refusal> {
    let key = pkt.flow_key();
    let syn = pkt.is_syn();
    let nat = svc.forwarding == Forwarding::Nat as u8;
    // A retried SYN of a connection that must go elsewhere keeps its ISN and
    // is not a new connection.
    let mut moving: Option<FlowValue> = None;
    let mut exclude = u32::MAX;
    if let Some(Found { value: v, embryo }) = found {
        // SAFETY: a pointer into the map value; other CPUs may write its
        // flags at the same time, which at worst loses one flag update.
        let f = unsafe { *v };
        if f.service_id == svc.id
            && let Some(b) = backend(f.backend_id)
        {
            let active = b.flags & BACKEND_F_ACTIVE != 0;
            let disowned = f.flags & (FLOW_F_UNVERIFIED | FLOW_F_REFUSED)
                == FLOW_F_UNVERIFIED | FLOW_F_REFUSED;
            if !syn && disowned {
                // The guessed backend does not have this connection: try
                // another (`exclude`), below.
                exclude = f.backend_id;
            } else if !syn {
                if active {
                    // An unverified flow learns the client's acknowledgement
                    // (its backend's next sequence number) once.
                    if f.flags & FLOW_F_UNVERIFIED != 0 && f.cookie == 0 && f.seq_delta == 0 {
                        learn_ack(ctx, pkt.tcp_flags, v);
                    }
                    let flags = f.flags | client_flags(pkt);
                    if flags != f.flags {
                        if flags & FLOW_F_CLOSING != 0 {
                            uncount(f.flags, f.backend_id);
                        }
                        // SAFETY: as above.
                        unsafe { (*v).flags = flags };
                        if flags & !f.flags & FLOW_F_CLOSING != 0 && !embryo {
                            closing(pkt, v);
                        }
                    }
                    // (A cookie connection moves once its backend answers.)
                    if embryo && flags & FLOW_F_ESTABLISHED != 0 && f.cookie == 0 {
                        promote(pkt, v, svc.forwarding == Forwarding::Nat as u8);
                    } else if !embryo
                        && f.flags & (FLOW_F_SYN | FLOW_F_ESTABLISHED) == FLOW_F_SYN
                        && flags & FLOW_F_ESTABLISHED != 0
                    {
                        completed(pkt, v);
                    }
                    let mut c = pinned(f.backend_id, b, false);
                    c.cookie = f.cookie & COOKIE_F_ON != 0;
                    c.seq_delta = f.seq_delta;
                    return Ok(c);
                }
                // Its backend is gone: re-scheduled below, mid-connection.
            } else if f.flags & FLOW_F_SYN != 0 && f.syn_seq_be == pkt.seq_be {
                // The same connection attempt again.
                if f.flags & FLOW_F_REFUSED != 0 {
                    exclude = f.backend_id;
                    moving = Some(f);
                } else if f.flags & FLOW_F_CLOSING == 0 {
                    let takes_new = b.flags & BACKEND_F_NEW_CONNECTIONS != 0;
                    if active && (takes_new || f.flags & FLOW_F_ESTABLISHED != 0) {
                        return Ok(pinned(f.backend_id, b, true));
                    }
                    // Still in its handshake with a backend that no longer
                    // takes new connections (or is down): move it.
                    moving = Some(f);
                }
            }
        }
    }
    let connection = moving.is_none() && (syn || !pkt.is_tcp());
    if connection && svc.flags & SERVICE_F_RATE_LIMIT != 0 {
        crate::rate::admit(svc.id, pkt.src_be).map_err(Refusal::Limited)?;
    }
    let (mut id, mut backend) = schedule(pkt, svc, exclude).ok_or(Refusal::NoBackend)?;
    // NAT: a backend that already has a live connection from this client
    // address and port (through another VIP) cannot take this one: another
    // backend if the service has one, else refused (`tuple_taken`).
    // (A backend of this service alone has no such connection.)
    if nat && syn {
        (id, backend) = claim::<true>(pkt, svc, id, backend).ok_or(Refusal::TupleInUse)?;
    }
    // The entry this one replaces (closed, moved, or of another service)
    // leaves its backend's count.
    if let Some(Found { value: v, .. }) = found {
        // SAFETY: a map value pointer, read at once.
        let (flags, backend_id) = unsafe { ((*v).flags, (*v).backend_id) };
        uncount(flags, backend_id);
    }
    let mut value = match moving {
        Some(f) => {
            // Refused once (now redispatched), or redispatched before.
            let redispatched = f.flags & (FLOW_F_REFUSED | FLOW_F_REDISPATCHED) != 0;
            FlowValue {
                backend_id: id,
                service_id: svc.id,
                syn_seq_be: f.syn_seq_be,
                flags: FLOW_F_SYN | if redispatched { FLOW_F_REDISPATCHED } else { 0 },
                cookie: 0,
                acl_generation,
                seq_delta: 0,
            }
        }
        None => FlowValue {
            backend_id: id,
            service_id: svc.id,
            syn_seq_be: if syn { pkt.seq_be } else { 0 },
            // NAT, a TCP packet without SYN opening an entry: this node
            // did not see the connection open.
            flags: if syn {
                FLOW_F_SYN
            } else if nat && pkt.is_tcp() {
                client_flags(pkt) | FLOW_F_UNVERIFIED
            } else {
                client_flags(pkt)
            },
            cookie: 0,
            acl_generation,
            seq_delta: 0,
        },
    };
    if value.flags & FLOW_F_UNVERIFIED != 0 {
        value.seq_delta = client_ack(ctx, pkt.tcp_flags);
    }
    // least_conn counts TCP connections from their SYN until a FIN or RST.
    if svc.scheduler == Scheduler::LeastConn as u8 && syn {
        value.flags |= FLOW_F_COUNTED;
        maps::add_conns(id, 1);
    }
    // Where the entry goes (issue 21: one insert per connection). A new
    // connection's SYN starts it in `FLOWS` while the half-open budget
    // lasts (also over an old entry of its 4-tuple there: the client port
    // reused), and the client's ACK completes it there in place, giving
    // its share back. Beyond the budget (SYNs that go unanswered: a flood)
    // in `EMBRYOS`, where a flood evicts only its own kind; an old entry
    // of its 4-tuple in `FLOWS` is taken out, or the client's ACK would
    // find the old connection first. A connection attempt moving to
    // another backend stays in its table; a SYN on a 4-tuple of `EMBRYOS`
    // stays there. A TCP packet without SYN that found no flow (a pick-up)
    // starts in `EMBRYOS`. UDP, and an established connection moved off a
    // dead backend, are in `FLOWS`.
    let in_flows = matches!(found, Some(Found { embryo: false, .. }));
    let embryo = pkt.is_tcp()
        && if !syn || !connection {
            !in_flows
        } else {
            matches!(found, Some(Found { embryo: true, .. })) || !maps::half_open_admit()
        };
    // An LRU insert only fails on allocation failure; the packet still goes
    // out, the next one of the flow is scheduled again.
    if embryo {
        if in_flows {
            let _ = FLOWS.remove(key);
        }
        let _ = EMBRYOS.insert(key, value, 0);
        maps::embryo_gate_stamp();
    } else {
        match found {
            // SAFETY: a map value pointer; a packet of the same 4-tuple on
            // another CPU at this instant may read a mix of old and new.
            Some(Found { value: v, .. }) => unsafe { *v = value },
            None => {
                let _ = FLOWS.insert(key, value, 0);
            }
        }
        // A half-open TCP connection is reported when it completes.
        if !syn {
            report_flow(&key, &value);
        }
    }
    Ok(Choice {
        backend_id: id,
        addr_be: backend.addr_be,
        port_be: backend.port_be,
        connection,
        syn_retransmit: false,
        midstream: pkt.is_tcp() && !syn,
        created: true,
        embryo,
        cookie: false,
        seq_delta: 0,
    })
}

/// The client's ACK completed a handshake in `FLOWS` (the entry, already
/// carrying the ACK's flags, stays where it is: no insert): its share of
/// the half-open budget comes back, and HA flow sync reports the flow now.
/// Out of line (a BPF subprogram): once per connection, its key off the
/// main stack.
#[inline(never)]
fn completed(pkt: &Packet, v: *mut FlowValue) {
    maps::half_open_completed();
    let key = pkt.flow_key();
    // SAFETY: a map value pointer, copied by the report.
    report_flow(&key, unsafe { &*v });
}

/// A connection's first FIN or RST, reported when closings are synced
/// (`SETTINGS_F_SYNC_CLOSES`: a cluster's peers drop their copy). Out of
/// line (a BPF subprogram): once per connection, its key off the main
/// stack.
#[inline(never)]
fn closing(pkt: &Packet, v: *mut FlowValue) {
    if maps::settings_flags() & SETTINGS_F_SYNC_CLOSES == 0 {
        return;
    }
    let key = pkt.flow_key();
    // SAFETY: a map value pointer, copied by the report.
    report_flow(&key, unsafe { &*v });
}

/// The client's acknowledgement number as on the wire (0: the packet has
/// no ACK). Out of line: for the rare unverified flow, off the main
/// program's stack.
#[inline(never)]
fn client_ack(ctx: &aya_ebpf::programs::XdpContext, tcp_flags: u8) -> u32 {
    if tcp_flags & TCP_FLAG_ACK == 0 {
        return 0;
    }
    crate::parse::tcp_ack_be(ctx)
}

/// An unverified flow's first acknowledgement from the client, kept in its
/// entry (`FLOW_F_UNVERIFIED`).
#[inline(never)]
fn learn_ack(ctx: &aya_ebpf::programs::XdpContext, tcp_flags: u8, v: *mut FlowValue) {
    let ack = client_ack(ctx, tcp_flags);
    // SAFETY: a map value pointer; a lost race only means another try.
    unsafe { (*v).seq_delta = ack };
}

/// The client's ACK completed the handshake: move the flow (already
/// carrying the ACK's flags) from `EMBRYOS` to `FLOWS`, and for NAT its
/// reply entry to `NAT_REVERSE`. Inserted before removed, so a packet on
/// another CPU always finds one of them. HA flow sync reports the flow now,
/// so a flood of half-open connections is not synced either. Out of line
/// (a BPF subprogram): once per connection, its keys off the main stack.
#[inline(never)]
fn promote(pkt: &Packet, v: *mut FlowValue, nat: bool) {
    let mut key = pkt.flow_key();
    promote_key(&mut key, v, nat);
}

/// [`promote`] by the flow's key (used as scratch for the reply's key).
#[inline(always)]
pub fn promote_key(key: &mut FlowKey, v: *mut FlowValue, nat: bool) {
    let client_be = key.src_be;
    let client_port_be = key.sport_be;
    // SAFETY: a map value pointer, valid until the removal below; the map
    // update copies from it.
    let value = unsafe { &*v };
    if FLOWS.insert(*key, value, 0).is_err() {
        return; // stays half-open; the next packet tries again
    }
    report_flow(key, value);
    let (backend_id, cookie, flags) = (value.backend_id, value.cookie, value.flags);
    let _ = EMBRYOS.remove(*key);
    if !nat {
        return;
    }
    let Some(b) = BACKENDS.get(backend_id) else {
        return;
    };
    // Replies found by the flow entry have no reply entry to move (a
    // SYN-cookie or unverified connection has one, even then).
    if b.flags & BACKEND_F_SOLE_REPLY != 0 && cookie == 0 && flags & FLOW_F_UNVERIFIED == 0 {
        return;
    }
    // The reply's key, in the same stack slot.
    key.src_be = b.addr_be;
    key.sport_be = b.port_be;
    key.dst_be = client_be;
    key.dport_be = client_port_be;
    // SAFETY: as above.
    if let Some(r) = unsafe { EMBRYO_REVERSE.get(*key) } {
        let _ = NAT_REVERSE.insert(*key, r, 0);
        let _ = EMBRYO_REVERSE.remove(*key);
    }
}

#[inline(always)]
fn pinned(backend_id: u32, backend: Backend, syn_retransmit: bool) -> Choice {
    Choice {
        backend_id,
        addr_be: backend.addr_be,
        port_be: backend.port_be,
        connection: false,
        syn_retransmit,
        midstream: false,
        created: false,
        embryo: false,
        cookie: false,
        seq_delta: 0,
    }
}

/// A backend for a new connection, as for a SYN (SYN cookies open their
/// connections with the client's ACK).
#[inline(always)]
pub fn schedule_new(pkt: &Packet, svc: &ServiceInfo) -> Option<(u32, Backend)> {
    schedule(pkt, svc, u32::MAX)
}

/// NAT, a new connection scheduled to `id`: that backend if it holds no
/// live connection of this client address and port through another VIP
/// ([`crate::backend_tuple::tuple_taken`]), else one more choice avoiding it, else
/// none. `SOLE_FREE` (a SYN): a backend of this service alone
/// (`BACKEND_F_SOLE_REPLY`) is not asked: no other VIP reaches it, and its
/// connection writes no reply entry, so an old one under its key is left
/// alone (a SYN cookie's connection writes one: it always asks, which also
/// clears an old entry under the key).
#[inline(always)]
pub fn claim<const SOLE_FREE: bool>(
    pkt: &Packet,
    svc: &ServiceInfo,
    id: u32,
    backend: Backend,
) -> Option<(u32, Backend)> {
    let free = |b: &Backend| SOLE_FREE && b.flags & BACKEND_F_SOLE_REPLY != 0;
    if free(&backend) || !crate::backend_tuple::tuple_taken(pkt, backend.addr_be, backend.port_be) {
        return Some((id, backend));
    }
    match schedule(pkt, svc, id) {
        Some((other, b))
            if other != id
                && (free(&b) || !crate::backend_tuple::tuple_taken(pkt, b.addr_be, b.port_be)) =>
        {
            Some((other, b))
        }
        _ => None,
    }
}

/// The backend id in `slot` of the service's live ring.
#[inline(always)]
fn ring_slot(svc: &ServiceInfo, slot: u32) -> Option<u32> {
    let (word, shift) = ring_word(svc.id, svc.ring, slot);
    BACKEND_RING.get(word).map(|w| (*w >> shift) as u32)
}

/// A backend for a new connection from the service's ring, avoiding
/// `exclude` (the backend that just refused it) if another one is there.
#[inline(always)]
fn schedule(pkt: &Packet, svc: &ServiceInfo, exclude: u32) -> Option<(u32, Backend)> {
    let len = svc.ring_len;
    if len == 0 || len > RING_SIZE || svc.id >= MAX_SERVICES {
        return None;
    }
    let slot = if svc.scheduler == Scheduler::Maglev as u8 {
        flow_hash(
            pkt.src_be,
            pkt.dst_be,
            pkt.sport_be,
            pkt.dport_be,
            pkt.proto,
        ) % len
    } else if svc.scheduler == Scheduler::SourceHash as u8 {
        source_hash(pkt.src_be) % len
    } else if svc.scheduler == Scheduler::LeastConn as u8 {
        least_conn_slot(pkt, svc, len)
    } else {
        let cursor = RR_CURSOR.get_ptr_mut(svc.id)?;
        // SAFETY: per-CPU slot of this service; nothing else writes it while we run.
        unsafe {
            let slot = *cursor % len;
            *cursor = if slot + 1 >= len { 0 } else { slot + 1 };
            slot
        }
    };
    let first = ring_slot(svc, slot)?;
    if first == exclude {
        let mut i = 1;
        while i <= REDISPATCH_PROBES {
            let s = (slot + i) % len;
            if let Some(id) = ring_slot(svc, s)
                && id != exclude
                && let Some(b) = active_backend(id)
            {
                return Some((id, b));
            }
            i += 1;
        }
    }
    Some((first, active_backend(first)?))
}

/// least_conn's power of two choices: two ring slots from the flow hash
/// (so CPUs scheduling at once look at different pairs instead of all
/// rushing the one least-loaded backend). The slot of the backend with fewer
/// connections per weight wins; a tie goes to the first, which the weighted
/// ring drew in proportion to weight. Out of line (a BPF subprogram): it
/// runs only for new least_conn flows, and its locals would otherwise
/// crowd the main program's 512-byte stack.
#[inline(never)]
fn least_conn_slot(pkt: &Packet, svc: &ServiceInfo, len: u32) -> u32 {
    // (The caller checked; said again so no division by zero is reachable.)
    if len == 0 {
        return 0;
    }
    let h = flow_hash(
        pkt.src_be,
        pkt.dst_be,
        pkt.sport_be,
        pkt.dport_be,
        pkt.proto,
    );
    let first = h % len;
    let Some(a) = ring_slot(svc, first) else {
        return first;
    };
    // The second candidate: a slot drawn by a second hash, or the slots
    // after it while they name the first's backend (the smooth weighted
    // ring interleaves backends, so a neighbour usually differs).
    let start = fmix32(h ^ 0x9e37_79b9) % len;
    let mut i = 0;
    while i < SECOND_CANDIDATE_PROBES {
        let second = (start + i) % len;
        if let Some(b) = ring_slot(svc, second)
            && b != a
        {
            let (Some(ba), Some(bb)) = (active_backend(a), active_backend(b)) else {
                return first;
            };
            // connections(a) / weight(a) > connections(b) / weight(b)
            let load_a = maps::conns(a) * bb.weight as u64;
            let load_b = maps::conns(b) * ba.weight as u64;
            return if load_b < load_a { second } else { first };
        }
        i += 1;
    }
    first
}
