//! XDP programs the tests and the benchmark need beside xdplb's own, kept
//! out of the production object: the benchmark's baselines (what any
//! balancer does at least for an established and for a new flow, measured
//! the same way as xdplb) and the
//! namespace labs' pass-through program for veth peers.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, LruHashMap},
    programs::XdpContext,
};
use lb_common::{FlowKey, FlowValue, ServiceInfo, ServiceKey};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

const ETH_LEN: usize = core::mem::size_of::<EthHdr>();
const L4_OFF: usize = ETH_LEN + core::mem::size_of::<Ipv4Hdr>();

/// The second baseline's service table.
#[map(name = "BASELINE_SERVICES")]
static BASELINE_SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(64, 0);

/// The second baseline's flow table.
#[map(name = "BASELINE_FLOWS")]
static BASELINE_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(1024, 0);

/// The third baseline's flow table. Small here: the namespace labs load
/// this object for `pass_through`, and an LRU map is preallocated; the
/// benchmark sizes it as its xdplb flow table (1 << 20) at load, so
/// neither evicts during a row.
#[map(name = "BASELINE_NEW_FLOWS")]
static BASELINE_NEW_FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(16, 0);

/// `BPF_F_NO_COMMON_LRU`: each CPU keeps its own LRU list (one hash table,
/// still, so every CPU finds every entry).
const BPF_F_NO_COMMON_LRU: u32 = 2;

/// The third baseline's table with per-CPU LRU lists (issue 21: measure
/// both), sized at load as the other.
#[map(name = "BASELINE_NEW_FLOWS_PERCPU_LRU")]
static BASELINE_NEW_FLOWS_PERCPU_LRU: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(16, BPF_F_NO_COMMON_LRU);

/// The one bounds-checked way into the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Baseline for benchmarks: bounce every frame, doing nothing else.
#[xdp]
pub fn baseline_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// For test labs on veth: frames another program sent back (`XDP_TX`)
/// reached a veth peer only when it ran an XDP program itself, so the
/// namespace tests put this pass-through program on the peers.
#[xdp]
pub fn pass_through(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The packet's flow and service keys, if it has the headers for them.
#[inline(always)]
fn keys(ctx: &XdpContext) -> Option<(FlowKey, ServiceKey)> {
    let ip = ptr_at::<Ipv4Hdr>(ctx, ETH_LEN)?;
    let ports = ptr_at::<[u16; 2]>(ctx, L4_OFF)?;
    // SAFETY: both bounds-checked just above.
    let (src_be, dst_be, proto, [sport_be, dport_be]) = unsafe {
        (
            u32::from_ne_bytes((*ip).src_addr),
            u32::from_ne_bytes((*ip).dst_addr),
            (*ip).proto,
            *ports,
        )
    };
    let service = ServiceKey {
        vip_be: dst_be,
        port_be: dport_be,
        proto,
        _pad: 0,
    };
    let flow = FlowKey {
        src_be,
        dst_be,
        sport_be,
        dport_be,
        proto,
        _pad: [0; 3],
    };
    Some((flow, service))
}

/// Second benchmark baseline: the least any balancer does for a packet of
/// an established flow. Read the addresses and ports, one hash lookup
/// (service), one LRU lookup (flow), bounce the frame. No checks beyond
/// the bounds the verifier demands, no counters, no rewrite.
#[xdp]
pub fn baseline_lookup(ctx: XdpContext) -> u32 {
    let Some((flow, service)) = keys(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: only tested for presence.
    let found =
        unsafe { BASELINE_SERVICES.get(service).is_some() && BASELINE_FLOWS.get(flow).is_some() };
    if found {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

/// Third benchmark baseline: the least any stateful balancer does for a
/// packet of a *new* flow. Read the addresses and ports, one hash lookup
/// (service), one LRU insert of the flow's (fresh) key, bounce the frame.
/// The benchmark sends every run from another client address, as its
/// new-flow rows do.
#[xdp]
pub fn baseline_insert(ctx: XdpContext) -> u32 {
    insert_into(&ctx, &BASELINE_NEW_FLOWS)
}

/// The third baseline's table looked up: the bench runs it after
/// `baseline_insert` on the same key, as a connection's ACK follows its
/// SYN, so b3's inserts are measured in a table whose entries are in use.
#[xdp]
pub fn baseline_find(ctx: XdpContext) -> u32 {
    let Some((flow, _)) = keys(&ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: only tested for presence.
    if unsafe { BASELINE_NEW_FLOWS.get(flow).is_some() } {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

/// The third baseline with per-CPU LRU lists.
#[xdp]
pub fn baseline_insert_percpu_lru(ctx: XdpContext) -> u32 {
    insert_into(&ctx, &BASELINE_NEW_FLOWS_PERCPU_LRU)
}

#[inline(always)]
fn insert_into(ctx: &XdpContext, table: &LruHashMap<FlowKey, FlowValue>) -> u32 {
    let Some((flow, service)) = keys(ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: only tested for presence.
    if unsafe { BASELINE_SERVICES.get(service).is_none() } {
        return xdp_action::XDP_PASS;
    }
    if table.insert(flow, FlowValue::default(), 0).is_ok() {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
