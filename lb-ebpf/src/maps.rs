//! The program's maps. Types and sizes come from `lb-common`; userspace may
//! shrink the LRU tables before load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key as LpmKey},
};
use lb_common::{
    ACL_DENY, ADDR_FILTER_ENTRIES, AclServiceKey, BPF_F_MMAPABLE, Backend, CachedHop,
    ClientRateKey, EmbryoGate, FLOW_EVENTS_BYTES, Firewall, FlowEvent, FlowKey, FlowValue,
    IfaceMac, MAX_ACCEPT_MACS, MAX_ACL_GLOBAL, MAX_ACL_SERVICE, MAX_BACKENDS, MAX_CLIENT_RATES,
    MAX_EMBRYOS, MAX_FLOWS, MAX_IFINDEX, MAX_NAT_FLOWS, MAX_SERVICES, MAX_VIPS, NatReverse,
    REASON_COUNT, REPLY_SLOTS as REPLY_SLOT_COUNT, RING_ENTRIES, RateLimit, ReplyOwnerKey,
    ReplySlot, SETTINGS_F_SYNC_FLOWS, ServiceInfo, ServiceKey, ServiceSlot, Settings,
    SynCookieState, Traffic, VipInfo, addr_filter_bit,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);
/// Two rings of `RING_SIZE` slots per service id, each slot a backend id,
/// two slots to an element (`lb_common::ring_word`); the service entry names
/// the live ring. Memory-mappable, so the daemon fills a ring with one copy.
#[map]
pub static BACKEND_RING: Array<u64> = Array::with_max_entries(RING_ENTRIES, BPF_F_MMAPABLE);
/// Next round-robin slot per service, per CPU (no atomics on the hot path).
#[map]
pub static RR_CURSOR: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
pub static NAT_REVERSE: LruHashMap<FlowKey, NatReverse> =
    LruHashMap::with_max_entries(MAX_NAT_FLOWS, 0);
/// Half-open TCP connections (a SYN seen, no ACK yet), promoted to `FLOWS`
/// by the client's first ACK: a SYN flood fills this table, not `FLOWS`.
#[map]
pub static EMBRYOS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_EMBRYOS, 0);
/// Reverse-NAT entries of `EMBRYOS` (a backend's SYN-ACK is translated
/// before the client's ACK promotes both).
#[map]
pub static EMBRYO_REVERSE: LruHashMap<FlowKey, NatReverse> =
    LruHashMap::with_max_entries(MAX_EMBRYOS, 0);
/// NAT backends whose replies need no reply entry (`BACKEND_F_SOLE_REPLY`):
/// address, port and protocol -> the backend id, whose service names the
/// VIP and port of the client's flow entry (daemon).
#[map]
pub static REPLY_OWNERS: HashMap<ReplyOwnerKey, u32> = HashMap::with_max_entries(MAX_BACKENDS, 0);
/// Per CPU: reply translations assembled from a flow entry, each slot
/// caching the next hop towards one client address (`reply_owner.rs`).
#[map]
pub static REPLY_SLOTS: PerCpuArray<ReplySlot> = PerCpuArray::with_max_entries(REPLY_SLOT_COUNT, 0);
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(REASON_COUNT, 0);
#[map]
pub static SERVICE_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);
#[map]
pub static BACKEND_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// Addresses the LB answers for: service VIPs and HA floating addresses.
#[map]
pub static VIPS: HashMap<u32, VipInfo> = HashMap::with_max_entries(MAX_VIPS, 0);
/// One entry: run-time switches and the HA lease.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);
/// New and moved flows, for HA flow sync (only while `SETTINGS_F_SYNC_FLOWS`).
#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_BYTES, 0);
/// Flow events the ring buffer had no room for (the daemon fell behind).
#[map]
pub static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// least_conn: active connections per backend id. The data path adds and
/// subtracts atomically (u64 wrapping: -1 is `u64::MAX`); the daemon resets
/// each entry from its flow-table census, since flows evicted or silently
/// dead never close (memory-mapped: it adjusts with atomic adds too).
#[map]
pub static BACKEND_CONNS: Array<u64> = Array::with_max_entries(MAX_BACKENDS, BPF_F_MMAPABLE);

/// New-connection limits by service id (daemon).
#[map]
pub static RATE_LIMITS: Array<RateLimit> = Array::with_max_entries(MAX_SERVICES, 0);
/// Per-(service, client) GCRA state: the theoretical arrival time (ns).
#[map]
pub static CLIENT_RATES: LruHashMap<ClientRateKey, u64> =
    LruHashMap::with_max_entries(MAX_CLIENT_RATES, 0);
/// Per-service GCRA state, by service id.
#[map]
pub static SERVICE_RATES: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// SYN-cookie meters by service id (data path only; see `SynCookieState`).
#[map]
pub static SYN_COOKIES: Array<SynCookieState> = Array::with_max_entries(MAX_SERVICES, 0);

/// The global deny list: source prefixes (address in network order).
#[map]
pub static ACL_GLOBAL: LpmTrie<u32, u8> = LpmTrie::with_max_entries(MAX_ACL_GLOBAL, 0);
/// Every service's allow and deny entries (`AclServiceKey`): the most
/// specific prefix decides (`ACL_ALLOW` / `ACL_DENY`).
#[map]
pub static ACL_SERVICE: LpmTrie<AclServiceKey, u8> = LpmTrie::with_max_entries(MAX_ACL_SERVICE, 0);
/// One entry: whether the global list has entries, and the generation.
#[map]
pub static FIREWALL: Array<Firewall> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn firewall() -> Firewall {
    FIREWALL.get(0).copied().unwrap_or_default()
}

/// Whether `src_be` is in the global deny list: its most specific entry
/// denies (configured backends have allow entries of their own).
#[inline(always)]
pub fn globally_denied(src_be: u32) -> bool {
    ACL_GLOBAL
        .get(LpmKey::new(32, src_be))
        .is_some_and(|a| *a == ACL_DENY)
}

/// The most specific allow/deny entry of service `id` covering `src_be`.
#[inline(always)]
pub fn service_acl(id: u32, src_be: u32) -> Option<u8> {
    let key = AclServiceKey {
        service_id_be: id.to_be(),
        addr_be: src_be,
    };
    ACL_SERVICE.get(LpmKey::new(64, key)).copied()
}

/// The service entries by id, with their keys (see `ServiceSlot`).
#[map]
pub static SERVICE_SLOTS: Array<ServiceSlot> = Array::with_max_entries(MAX_SERVICES, 0);
/// Which addresses may be VIPs (as destination) or backends (as source):
/// bit sets the daemon keeps a superset of (see `lb_common::addr_filter_bit`).
#[map]
pub static ADDR_FILTER: Array<u64> = Array::with_max_entries(ADDR_FILTER_ENTRIES, 0);
/// Next hop towards each backend, per CPU (each CPU fills its own: no torn
/// reads), indexed by backend id.
#[map]
pub static HOP_CACHE: PerCpuArray<CachedHop> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
/// One entry: the generation cached next hops must carry to be used.
#[map]
pub static HOP_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
/// The attached interfaces' MACs, by ifindex (see `l2.rs`).
#[map]
pub static IFACE_MACS: Array<IfaceMac> = Array::with_max_entries(MAX_IFINDEX, 0);
/// New TCP connections started in `FLOWS` since the daemon last refilled
/// (set it to 0), less those that completed, on all CPUs: the half-open
/// budget (`lb_common::half_open_budget`). Signed: a completion of a
/// connection started before the refill may take it below 0.
#[map]
pub static HALF_OPEN_SPENT: Array<u64> = Array::with_max_entries(1, 0);
/// Whether SYNs must look in `EMBRYOS` (`lb_common::EmbryoGate`).
#[map]
pub static EMBRYO_GATE: Array<EmbryoGate> = Array::with_max_entries(1, 0);
/// The half-open budget, set by the loader from the flow table's size; 0
/// (never set) puts every SYN in `EMBRYOS`. In `.rodata`: a constant to the
/// verifier.
#[unsafe(no_mangle)]
static HALF_OPEN_BUDGET: u32 = 0;

/// Atomic add to a shared counter.
#[inline(always)]
fn atomic_add(p: *mut u64, delta: i64) {
    // SAFETY: a map value pointer, 8-byte aligned; every writer on the data
    // path adds atomically (BPF_ATOMIC | BPF_ADD).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p,
            delta as u64,
        )
    };
}

/// A new TCP connection may start in `FLOWS`: it takes a share of the
/// half-open budget, if any is left (read after the add: CPUs adding at
/// the same moment err towards `EMBRYOS`).
#[inline(always)]
pub fn half_open_admit() -> bool {
    // SAFETY: a plain read of a global; volatile so the loader's value is
    // read, not the initial one.
    let budget = unsafe { core::ptr::read_volatile(&HALF_OPEN_BUDGET) };
    let Some(p) = HALF_OPEN_SPENT.get_ptr_mut(0) else {
        return false;
    };
    atomic_add(p, 1);
    // SAFETY: as above; a torn read is not possible for an aligned u64.
    if unsafe { core::ptr::read_volatile(p) } as i64 > budget as i64 {
        atomic_add(p, -1);
        return false;
    }
    true
}

/// A connection started in `FLOWS` completed its handshake: its share of
/// the budget comes back.
#[inline(always)]
pub fn half_open_completed() {
    if let Some(p) = HALF_OPEN_SPENT.get_ptr_mut(0) {
        atomic_add(p, -1);
    }
}

/// Whether a SYN that `FLOWS` does not know must look in `EMBRYOS`.
#[inline(always)]
pub fn embryo_gate_open() -> bool {
    EMBRYO_GATE.get(0).is_some_and(|g| g.used_ns > g.retired_ns)
}

/// An entry went to `EMBRYOS` (a SYN beyond the budget, a pick-up, a
/// SYN-cookie connection): keep the gate open, so a SYN on its 4-tuple
/// finds it. The shared stamp is written at most once a second, so a
/// flood on many CPUs does not bounce its cache line. Out of line: no
/// connection within the budget comes here.
#[inline(never)]
pub fn embryo_gate_stamp() {
    // SAFETY: helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if let Some(g) = EMBRYO_GATE.get_ptr_mut(0) {
        // SAFETY: a map value pointer; concurrent stamps store similar times.
        unsafe {
            if now > (*g).used_ns + 1_000_000_000 {
                (*g).used_ns = now;
            }
        }
    }
}

/// Whether `addr_be` may be in filter set `set` (false: certainly not).
/// An array read the verifier inlines: no helper call.
#[inline(always)]
pub fn may_be(set: u32, addr_be: u32) -> bool {
    let (word, bit) = addr_filter_bit(set, addr_be);
    ADDR_FILTER.get(word).is_some_and(|w| *w & bit != 0)
}

/// The service with id `id`, if it still serves (VIP, port, protocol):
/// what a flow entry's id is trusted for only after this check.
#[inline(always)]
pub fn service_by_id(id: u32, vip_be: u32, port_be: u16, proto: u8) -> Option<ServiceInfo> {
    let s = SERVICE_SLOTS.get(id)?;
    let k = &s.key;
    (k.vip_be == vip_be && k.port_be == port_be && k.proto == proto && s.info.id == id)
        .then_some(s.info)
}

/// Add `delta` (1 or -1) to backend `id`'s active-connection estimate.
#[inline(always)]
pub fn add_conns(id: u32, delta: i64) {
    if let Some(p) = BACKEND_CONNS.get_ptr_mut(id) {
        // SAFETY: a map value pointer, 8-byte aligned; every writer on the
        // data path goes through this atomic add (BPF_ATOMIC | BPF_ADD; the
        // BPF target's core has no atomic read-modify-write types).
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p,
                delta as u64,
            )
        };
    }
}

/// Backend `id`'s active-connection estimate (0 if it went negative).
#[inline(always)]
pub fn conns(id: u32) -> u64 {
    let c = BACKEND_CONNS.get(id).copied().unwrap_or(0);
    if (c as i64) < 0 { 0 } else { c }
}

#[inline(always)]
pub fn hop_generation() -> u32 {
    HOP_GENERATION.get(0).copied().unwrap_or(0)
}

#[inline(always)]
pub fn settings_flags() -> u32 {
    SETTINGS.get(0).map_or(0, |s| s.flags)
}

/// The HA lease (`Settings::lease_until_ns`).
#[inline(always)]
pub fn lease_until_ns() -> u64 {
    SETTINGS.get(0).map_or(0, |s| s.lease_until_ns)
}

/// Whether `mac` is one the HA node accepts besides the interfaces' own
/// (read in place: the struct is too large to copy onto the stack).
#[inline(always)]
pub fn accepted_mac(mac: &[u8; 6]) -> bool {
    let Some(s) = SETTINGS.get_ptr(0) else {
        return false;
    };
    // SAFETY: a map value pointer; fields read in place.
    let n = unsafe { (*s).accept_count } as usize;
    let mut i = 0;
    while i < MAX_ACCEPT_MACS {
        if i >= n {
            return false;
        }
        // SAFETY: as above; `i` is below the array's length.
        if unsafe { (*s).accept_macs[i] } == *mac {
            return true;
        }
        i += 1;
    }
    false
}

/// The MAC of interface `ifindex`, if the daemon set it.
#[inline(always)]
pub fn iface_mac(ifindex: u32) -> Option<[u8; 6]> {
    IFACE_MACS
        .get(ifindex)
        .filter(|m| m.set != 0)
        .map(|m| m.mac)
}

#[inline(always)]
pub fn vip(addr_be: u32) -> Option<VipInfo> {
    // SAFETY: copied out at once.
    unsafe { VIPS.get(addr_be).copied() }
}

/// Report a flow the data path just created or moved, if flow sync is on.
/// Never waits: without room the event is counted as lost.
#[inline(always)]
pub fn report_flow(key: &FlowKey, value: &FlowValue) {
    if settings_flags() & SETTINGS_F_SYNC_FLOWS == 0 {
        return;
    }
    // Reserved and written in place: no 32-byte event on the stack.
    match FLOW_EVENTS.reserve::<FlowEvent>(0) {
        Some(mut e) => {
            let p = e.as_mut_ptr();
            // SAFETY: the reserved record, ours until submitted.
            unsafe {
                (*p).key = *key;
                (*p).value = *value;
            }
            e.submit(0);
        }
        None => {
            if let Some(c) = EVENTS_LOST.get_ptr_mut(0) {
                // SAFETY: per-CPU slot, no concurrent writer.
                unsafe { *c += 1 };
            }
        }
    }
}

/// The service a packet addresses (`Packet::service_key`).
#[inline(always)]
pub fn service(key: ServiceKey) -> Option<ServiceInfo> {
    // SAFETY: the value is copied out at once; userspace replaces whole entries.
    unsafe { SERVICES.get(key).copied() }
}

/// Where a flow's entry was found.
#[derive(Clone, Copy)]
pub struct Found {
    pub value: *mut FlowValue,
    /// In `EMBRYOS` (handshake not completed), not `FLOWS`.
    pub embryo: bool,
}

/// The packet's flow entry: `FLOWS`, then (TCP only) `EMBRYOS`. The second
/// lookup costs only TCP packets of no flow in `FLOWS`; a SYN (`syn`) makes
/// it only while `EMBRYO_GATE` is open, so a new connection's SYN does one
/// lookup that misses, whose bucket its insert then finds in the cache.
#[inline(always)]
pub fn find_flow(key: FlowKey, tcp: bool, syn: bool) -> Option<Found> {
    if let Some(value) = FLOWS.get_ptr_mut(key) {
        return Some(Found {
            value,
            embryo: false,
        });
    }
    if !tcp || (syn && !embryo_gate_open()) {
        return None;
    }
    EMBRYOS.get_ptr_mut(key).map(|value| Found {
        value,
        embryo: true,
    })
}

/// A client flow's entry by key, established or half-open.
#[inline(always)]
pub fn any_flow(key: FlowKey) -> Option<*mut FlowValue> {
    FLOWS.get_ptr_mut(key).or_else(|| EMBRYOS.get_ptr_mut(key))
}

/// The reverse-NAT entry of a backend's reply, in place (its next-hop
/// cache is written through the pointer): `NAT_REVERSE`, then for TCP the
/// half-open connections' `EMBRYO_REVERSE`.
#[inline(always)]
pub fn nat_reverse(key: FlowKey, tcp: bool) -> Option<*mut NatReverse> {
    NAT_REVERSE
        .get_ptr_mut(key)
        .or_else(|| tcp.then(|| EMBRYO_REVERSE.get_ptr_mut(key)).flatten())
}
