//! Map keys, values and sizes.

/// Most services (VIP, port, protocol) one program serves.
pub const MAX_SERVICES: u32 = 64;
/// Size of the global backend table; backend ids index into it.
pub const MAX_BACKENDS: u32 = 4096;
/// Slots per service in the backend ring. Prime, as Maglev needs; round robin
/// uses a prefix of the same slots.
pub const RING_SIZE: u32 = 65537;
/// Each service has two rings: the live one, and one the daemon fills before
/// it flips the service entry to it in a single update.
pub const RING_HALVES: u32 = 2;
/// A ring's slots are backend ids (u32), packed two to a `u64` element of
/// `BACKEND_RING` (an array's elements are 8-byte aligned, so a `u32` array
/// would waste half its memory): slot `2k` in the low half of element `k`.
pub const RING_WORDS: u32 = RING_SIZE.div_ceil(2);
/// Elements of `BACKEND_RING`.
pub const RING_ENTRIES: u32 = MAX_SERVICES * RING_HALVES * RING_WORDS;
/// `BPF_F_MMAPABLE`: the daemon writes a whole ring through a memory
/// mapping of the array instead of one syscall per slot.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Element of `BACKEND_RING` holding `slot` of ring `half` of service
/// `service_id`, and the bit offset of the slot in it.
#[inline(always)]
pub const fn ring_word(service_id: u32, half: u8, slot: u32) -> (u32, u32) {
    (
        (service_id * RING_HALVES + (half as u32 & 1)) * RING_WORDS + slot / 2,
        (slot & 1) * 32,
    )
}
/// Entries in the LRU flow table (client flow -> backend).
pub const MAX_FLOWS: u32 = 1 << 20;
/// Entries in the LRU reverse-NAT table (backend reply -> VIP).
pub const MAX_NAT_FLOWS: u32 = 1 << 20;
/// Entries in the embryonic tables: TCP connections that have sent a SYN
/// but no ACK yet (and their reverse-NAT twins) while SYNs go unanswered
/// faster than the half-open budget allows. Kept apart so a SYN flood
/// evicts only other half-open connections, never established flows.
pub const MAX_EMBRYOS: u32 = 1 << 18;

/// The half-open budget: how many new TCP connections may be half-open in
/// `FLOWS` at once (started by a SYN there, where the client's ACK
/// completes them in place, with no second insert) beyond those that
/// completed since the daemon's last refill (every second,
/// `HALF_OPEN_SPENT` back to 0). Beyond it, SYNs go to `EMBRYOS`: a flood
/// leaks at most this many entries a second into the flow table. One
/// count for all CPUs (a connection's SYN and ACK may arrive on different
/// ones). A 64th of the flow table, at least 64: above the handshakes a
/// legitimate load has in flight (rate × round-trip time) for tables sized
/// to it.
pub const fn half_open_budget(flow_table_size: u32) -> u32 {
    let b = flow_table_size / 64;
    if b < 64 { 64 } else { b }
}

/// How long after the last entry that went to `EMBRYOS` a SYN still looks
/// there (a retried SYN of such a connection; TCP gives up after about 63
/// s of retries): the daemon closes `EMBRYO_GATE` after it.
pub const EMBRYO_GATE_HOLD_NS: u64 = 75_000_000_000;

/// Map names, shared so userspace finds what the program declares.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_RING: &str = "BACKEND_RING";
    pub const RR_CURSOR: &str = "RR_CURSOR";
    pub const FLOWS: &str = "FLOWS";
    pub const NAT_REVERSE: &str = "NAT_REVERSE";
    pub const EMBRYOS: &str = "EMBRYOS";
    pub const EMBRYO_REVERSE: &str = "EMBRYO_REVERSE";
    pub const REPLY_OWNERS: &str = "REPLY_OWNERS";
    pub const REPLY_SLOTS: &str = "REPLY_SLOTS";
    pub const REASONS: &str = "REASONS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const VIPS: &str = "VIPS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const FLOW_EVENTS: &str = "FLOW_EVENTS";
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    pub const SERVICE_SLOTS: &str = "SERVICE_SLOTS";
    pub const BACKEND_CONNS: &str = "BACKEND_CONNS";
    pub const RATE_LIMITS: &str = "RATE_LIMITS";
    pub const CLIENT_RATES: &str = "CLIENT_RATES";
    pub const SERVICE_RATES: &str = "SERVICE_RATES";
    pub const ACL_GLOBAL: &str = "ACL_GLOBAL";
    pub const ACL_SERVICE: &str = "ACL_SERVICE";
    pub const FIREWALL: &str = "FIREWALL";
    pub const SYN_COOKIES: &str = "SYN_COOKIES";
    /// Program array whose slot 0 the daemon fills with [`COOKIE_PROGRAM`]
    /// (the main program tail-calls it).
    pub const COOKIE_PROGRAM_ARRAY: &str = "COOKIE_PROGRAM";
    /// The SYN-cookie program (answers SYNs, opens cookie connections).
    pub const COOKIE_PROGRAM: &str = "xdplb_cookie";
    pub const ADDR_FILTER: &str = "ADDR_FILTER";
    pub const HOP_CACHE: &str = "HOP_CACHE";
    pub const HOP_GENERATION: &str = "HOP_GENERATION";
    pub const HALF_OPEN_SPENT: &str = "HALF_OPEN_SPENT";
    pub const EMBRYO_GATE: &str = "EMBRYO_GATE";
    /// Global in `.rodata`: the half-open budget ([`super::half_open_budget`]).
    pub const HALF_OPEN_BUDGET: &str = "HALF_OPEN_BUDGET";
    pub const IFACE_MACS: &str = "IFACE_MACS";
    /// The XDP entry point in the object file.
    pub const PROGRAM: &str = "xdplb";
    /// The tc-ingress program that sends packets the XDP program could not
    /// (unresolved neighbour) through the kernel's neighbour resolution.
    pub const NEIGH_PROGRAM: &str = "xdplb_neigh";
    /// Global in `.rodata` that plants a bug for the fuzz test's self-check.
    pub const TEST_FAULT: &str = "TEST_FAULT";
    /// Every map, all pinned so a restarted daemon adopts flows, config and
    /// counters.
    pub const MAPS: &[&str] = &[
        SERVICES,
        BACKENDS,
        BACKEND_RING,
        RR_CURSOR,
        FLOWS,
        NAT_REVERSE,
        EMBRYOS,
        EMBRYO_REVERSE,
        REPLY_OWNERS,
        REPLY_SLOTS,
        REASONS,
        SERVICE_STATS,
        BACKEND_STATS,
        VIPS,
        SETTINGS,
        FLOW_EVENTS,
        EVENTS_LOST,
        SERVICE_SLOTS,
        BACKEND_CONNS,
        RATE_LIMITS,
        CLIENT_RATES,
        SERVICE_RATES,
        ACL_GLOBAL,
        ACL_SERVICE,
        FIREWALL,
        SYN_COOKIES,
        COOKIE_PROGRAM_ARRAY,
        ADDR_FILTER,
        HOP_CACHE,
        HOP_GENERATION,
        IFACE_MACS,
        HALF_OPEN_SPENT,
        EMBRYO_GATE,
    ];
}

/// Version of the map layout (keys, values, sizes). Pins live under a
/// directory named after it, so a daemon never adopts maps it would misread;
/// bump it with any change to a map type or size.
pub const LAYOUT_VERSION: u32 = 19;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of the service table: what a client addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    /// Virtual IP, network byte order.
    pub vip_be: u32,
    /// Virtual port, network byte order.
    pub port_be: u16,
    /// IP protocol number (6 = TCP, 17 = UDP).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);

/// How a service picks a backend for a new flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// Walk the weighted ring one slot per new flow (per CPU cursor).
    RoundRobin = 0,
    /// Index the Maglev table with the flow's 5-tuple hash.
    Maglev = 1,
    /// Index the Maglev table with the client address's hash alone: every
    /// connection of a client goes to the same backend (session
    /// persistence), and a backend change moves few clients.
    SourceHash = 2,
    /// Power of two choices: two candidates from the weighted ring (slots
    /// picked by the flow hash), the one with fewer active connections per
    /// unit of weight (`BACKEND_CONNS`). TCP only.
    LeastConn = 3,
}

/// How a service forwards packets to the chosen backend.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// Rewrite MAC addresses only; the backend holds the VIP itself and
    /// answers the client directly.
    Dsr = 0,
    /// Rewrite destination address and port; replies come back through the
    /// LB and are translated back to the VIP.
    Nat = 1,
}

/// Value of the service table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// Index into the per-service regions of the ring and stats maps.
    pub id: u32,
    /// Used slots of the ring (Maglev: `RING_SIZE`; round robin: the weighted
    /// sequence length). Zero means no backend is available.
    pub ring_len: u32,
    /// A [`Scheduler`] as u8.
    pub scheduler: u8,
    /// A [`Forwarding`] as u8.
    pub forwarding: u8,
    /// `SERVICE_F_*` bits.
    pub flags: u8,
    /// Which of the service's two rings is live (0 or 1).
    pub ring: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 12);

/// When the service has no backend left (all down or drained), hand its
/// packets to the local stack instead of dropping them.
pub const SERVICE_F_PASS_WHEN_EMPTY: u8 = 1;
/// NAT: when a backend refuses a connection (RST to the SYN), withhold the
/// RST and send the client's retried SYN to another backend.
pub const SERVICE_F_REDISPATCH: u8 = 2;
/// The service has allow or deny entries in `ACL_SERVICE`.
pub const SERVICE_F_ACL: u8 = 4;
/// The service has an allow list: a source no entry allows is refused.
pub const SERVICE_F_ALLOW_ONLY: u8 = 8;
/// The service limits new connections (`RATE_LIMITS[id]`).
pub const SERVICE_F_RATE_LIMIT: u8 = 16;
/// New connections may be answered with SYN cookies (NAT TCP services):
/// when `RATE_LIMITS[id]` says (its `syn_cookie_*` GCRA).
pub const SERVICE_F_SYN_COOKIES: u8 = 32;

/// The data path's SYN-cookie meter of a service (`SYN_COOKIES[id]`): a GCRA
/// over its SYNs (`RateLimit::syn_cookie_*`), and cookies answer SYNs until
/// `until_ns` once a SYN exceeds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynCookieState {
    /// The GCRA's theoretical arrival time.
    pub tat_ns: u64,
    pub until_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SynCookieState>() == 16);
/// How long cookies stay on after the last SYN over the threshold.
pub const SYN_COOKIE_HOLD_NS: u64 = 1_000_000_000;

/// New-connection limits of one service (`RATE_LIMITS`, by service id), as
/// GCRA parameters: a connection is admitted when its arrival is no earlier
/// than the bucket's theoretical arrival time minus the burst tolerance.
/// An interval of 0 means no limit of that kind.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Per client address: ns between connections (1e9 / rate).
    pub client_interval_ns: u64,
    /// Per client: how far ahead of time a burst may run (interval ×
    /// (burst − 1)).
    pub client_tolerance_ns: u64,
    /// The whole service: the same two.
    pub total_interval_ns: u64,
    pub total_tolerance_ns: u64,
    /// SYN cookies (with `SERVICE_F_SYN_COOKIES`): the SYN rate above which
    /// they answer, as a GCRA (interval 0: always).
    pub syn_cookie_interval_ns: u64,
    pub syn_cookie_tolerance_ns: u64,
}
const _: () = assert!(core::mem::size_of::<RateLimit>() == 48);

/// Key of `CLIENT_RATES`: one bucket per (service, client address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClientRateKey {
    pub service_id: u32,
    pub addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<ClientRateKey>() == 8);

/// Client buckets kept (LRU: a client idle long enough to be evicted has a
/// full bucket anyway).
pub const MAX_CLIENT_RATES: u32 = 65536;

/// Backend slot is in use and its active check passes: the flows pinned to
/// it stay. Flows pinned to a slot without it are re-scheduled.
pub const BACKEND_F_ACTIVE: u8 = 1;
/// The backend takes new connections (it is in its service's ring). Without
/// it (passive failure, weight 0) established flows stay, and a connection
/// still in its handshake moves on its next retried SYN.
pub const BACKEND_F_NEW_CONNECTIONS: u8 = 2;
/// NAT: the backend's address, port and protocol belong to this service
/// alone (no other NAT service has them), so its replies find their
/// connection through `REPLY_OWNERS` and the client's flow entry: a new
/// connection writes no reply entry (one table insert per connection, issue
/// 21) and needs no one-client-port check.
pub const BACKEND_F_SOLE_REPLY: u8 = 4;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// Value of the backend table, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Backend address, network byte order.
    pub addr_be: u32,
    /// Backend port, network byte order (NAT rewrites to it; DSR ignores it).
    pub port_be: u16,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// The service this backend entry belongs to (ids are per service, so
    /// health and counters are too). Lets a restarted daemon rebuild its ids
    /// from the pinned maps.
    pub service_id: u32,
    /// Configured weight (least_conn compares connections per weight).
    pub weight: u16,
    pub _pad2: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 16);

/// A flow as seen on the wire, in one direction. Key of the flow table
/// (client -> VIP) and of the reverse-NAT table (backend -> client).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_be: u32,
    pub dst_be: u32,
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

/// Value of the flow table: where this flow is pinned and, for TCP, which
/// connection it is. A SYN on a known 4-tuple is a retransmission only if it
/// carries `syn_seq_be` and the connection is not closing; any other SYN is a
/// new connection (client ports repeat within seconds under load).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    pub backend_id: u32,
    pub service_id: u32,
    /// Initial sequence number of the client SYN that opened the connection,
    /// as on the wire (valid with `FLOW_F_SYN`).
    pub syn_seq_be: u32,
    /// `FLOW_F_*` bits.
    pub flags: u8,
    /// `COOKIE_F_*` bits: the connection was opened with a SYN cookie.
    pub cookie: u8,
    /// The firewall generation (`Firewall::generation`) the client's source
    /// was last checked against its service's allow/deny lists at; 0: never.
    pub acl_generation: u16,
    /// SYN cookies: the backend's ISN minus the cookie (the LB's ISN towards
    /// the client), added to the client's acknowledgements; while
    /// `COOKIE_F_PENDING`, the cookie itself.
    pub seq_delta: u32,
}
const _: () = assert!(core::mem::size_of::<FlowValue>() == 20);

/// The connection's client side was opened with a SYN cookie: sequence
/// numbers are translated by `seq_delta` (flow and reverse-NAT entries).
pub const COOKIE_F_ON: u8 = 1;
/// ... and the backend has not answered the LB's SYN yet (`seq_delta` holds
/// the cookie).
pub const COOKIE_F_PENDING: u8 = 2;

/// The entry was opened by a client SYN; `syn_seq_be` holds its ISN.
pub const FLOW_F_SYN: u8 = 1;
/// The client acknowledged the handshake (a non-SYN ACK): established.
pub const FLOW_F_ESTABLISHED: u8 = 2;
/// NAT: the backend answered the SYN (SYN-ACK seen).
pub const FLOW_F_REPLIED: u8 = 4;
/// A FIN or RST was seen in either direction the LB sees.
pub const FLOW_F_CLOSING: u8 = 8;
/// NAT: the backend refused the connection (RST to the SYN) and the RST was
/// withheld; the client's retried SYN goes to another backend.
pub const FLOW_F_REFUSED: u8 = 16;
/// NAT: this connection attempt was redispatched once already; a second
/// refusal reaches the client.
pub const FLOW_F_REDISPATCHED: u8 = 32;
/// least_conn: this connection is counted in its backend's
/// `BACKEND_CONNS` entry (until it closes, moves or is replaced).
pub const FLOW_F_COUNTED: u8 = 64;
/// NAT: this node did not see the connection open (its first packet here
/// was mid-stream, or the entry came from the HA peer), so its backend is
/// a guess until the backend's first reply proves it (issue 20: at a
/// failover a connection's SYN went through one node and its ACK through
/// the other, which sent it to another backend). While set (and the flow
/// has no SYN cookie), `seq_delta` holds the client's acknowledgement
/// number as on the wire (0: not seen yet), and `FLOW_F_REFUSED` means the
/// guessed backend disowned the connection: the next client packet goes
/// to another.
pub const FLOW_F_UNVERIFIED: u8 = 128;

/// `NatReverse::cookie` bit: the flow is `FLOW_F_UNVERIFIED` (its replies
/// are checked against it until one proves the backend).
pub const REPLY_F_UNVERIFIED: u8 = 4;

/// A reply proves an unverified flow's backend if its sequence number is
/// at most this far past the client's acknowledgement (the backend's data
/// in flight); a stray backend's (a closed connection on the same 4-tuple)
/// falls in it with a chance of 1 in 256.
pub const PICKUP_WINDOW: u32 = 1 << 24;

/// Value of the reverse-NAT table: the address the client talked to, and
/// the next hop towards the client (filled by the data path itself).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatReverse {
    pub vip_be: u32,
    pub vport_be: u16,
    /// `SERVICE_F_*` bits of the service, as the reply path needs them.
    pub service_flags: u8,
    /// `COOKIE_F_*` bits, as in the flow entry, and `REPLY_F_UNVERIFIED`.
    pub cookie: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// Where replies of this flow go; written by the first reply.
    pub hop: CachedHop,
    /// As `FlowValue::seq_delta` (subtracted from the backend's sequence
    /// numbers).
    pub seq_delta: u32,
}
const _: () = assert!(core::mem::size_of::<NatReverse>() == 52);

/// Key of `REPLY_OWNERS`: a NAT backend as its replies' source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ReplyOwnerKey {
    pub addr_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<ReplyOwnerKey>() == 8);

/// Entries of `REPLY_SLOTS` per CPU: reply translations made from a flow
/// entry (no reply entry of their own) are assembled here, with the next
/// hop towards the client cached by client address.
pub const REPLY_SLOTS: u32 = 1024;

/// Value of `REPLY_SLOTS`: the client address whose next hop `rev.hop`
/// caches, and the reply translation last assembled in the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReplySlot {
    pub client_be: u32,
    pub rev: NatReverse,
}
const _: () = assert!(core::mem::size_of::<ReplySlot>() == 56);

/// Most entries in the global deny list, and in all services' lists.
pub const MAX_ACL_GLOBAL: u32 = 16384;
pub const MAX_ACL_SERVICE: u32 = 16384;
/// `BPF_F_NO_PREALLOC`, which LPM tries require.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Key data of `ACL_SERVICE` (an LPM trie): the service id, then the source
/// prefix; the trie's prefix length is 32 + the source prefix's, so a
/// lookup with a full address finds that service's most specific entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AclServiceKey {
    /// Service id, network byte order (the trie matches bytes in order).
    pub service_id_be: u32,
    pub addr_be: u32,
}
const _: () = assert!(core::mem::size_of::<AclServiceKey>() == 8);

/// Value of an `ACL_SERVICE` entry: the most specific prefix decides.
pub const ACL_ALLOW: u8 = 1;
pub const ACL_DENY: u8 = 2;

/// The single entry of `FIREWALL`, written by the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Firewall {
    /// Entries in `ACL_GLOBAL`; 0 skips its lookup.
    pub global_entries: u32,
    /// Bumped (1..=65535, never 0) with every change to any list: a flow
    /// checked at another generation is checked again.
    pub generation: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Firewall>() == 8);

/// A next hop the kernel's FIB named, kept so later packets skip the
/// `bpf_fib_lookup` (the most expensive step of a forwarded packet). Valid
/// while `generation` equals `HOP_GENERATION`, which the daemon bumps on
/// every change to the kernel's routes, neighbours, links or addresses; and
/// only for packets that arrive on `in_ifindex` and fit `mtu`. Zeroed (mtu
/// 0) means empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedHop {
    pub generation: u32,
    /// The ingress interface of the packet the FIB was asked about.
    pub in_ifindex: u32,
    /// Egress interface.
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// The route's MTU; larger packets take the FIB (and its verdict).
    pub mtu: u16,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<CachedHop>() == 32);

/// The single entry of `EMBRYO_GATE`: whether a SYN that finds no flow in
/// `FLOWS` must look in `EMBRYOS` too. The data path stamps `used_ns`
/// (`bpf_ktime_get_ns`) when it puts an entry there; the daemon sets
/// `retired_ns` to it once it is [`EMBRYO_GATE_HOLD_NS`] old. Open while
/// `used_ns > retired_ns` (two fields, so a stamp written after the
/// daemon read the old one keeps the gate open).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EmbryoGate {
    pub used_ns: u64,
    pub retired_ns: u64,
}
const _: () = assert!(core::mem::size_of::<EmbryoGate>() == 16);

/// Entry of `SERVICE_SLOTS` (indexed by service id): the service entry
/// again, with its key. A packet whose flow is known finds its service by
/// the flow's service id in this array, without a hash lookup; the key
/// proves the id still belongs to the service the packet addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceSlot {
    pub key: ServiceKey,
    pub info: ServiceInfo,
}
const _: () = assert!(core::mem::size_of::<ServiceSlot>() == 20);

/// Bits in each of the address filter's sets (a hash of the address picks
/// one). Two sets of 65536 bits, 8 KiB each: a handful of VIPs and a few
/// thousand backends leave almost every bit clear, so an ordinary packet
/// is told "not for us" by one array read, without a hash-map lookup.
pub const ADDR_FILTER_BITS: u32 = 1 << 16;
/// `u64` words per set.
pub const ADDR_FILTER_WORDS: u32 = ADDR_FILTER_BITS / 64;
/// Set 0: destination addresses the LB answers for (every `VIPS` key).
pub const FILTER_VIPS: u32 = 0;
/// Set 1: source addresses replies to translate can come from (backends).
pub const FILTER_BACKENDS: u32 = 1;
/// Elements of `ADDR_FILTER`.
pub const ADDR_FILTER_ENTRIES: u32 = 2 * ADDR_FILTER_WORDS;

/// Element of `ADDR_FILTER` and bit in it for `addr_be` in `set`.
#[inline(always)]
pub const fn addr_filter_bit(set: u32, addr_be: u32) -> (u32, u64) {
    let h = crate::hash::fmix32(addr_be) >> 16;
    ((set & 1) * ADDR_FILTER_WORDS + h / 64, 1u64 << (h % 64))
}

/// Per-service and per-backend traffic counters (per CPU in the maps).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    /// Connections started: TCP SYNs scheduled (a new SYN on a reused 4-tuple
    /// included, retransmissions not); UDP: new flows.
    pub connections: u64,
    /// Service only: packets that found no backend (dropped or passed per
    /// the service's policy).
    pub no_backend: u64,
    /// Backend only: client SYNs retransmitted (same ISN) on a connection
    /// pinned to this backend. Passive health signal.
    pub syn_retransmits: u64,
    /// Backend only, NAT: connections the backend refused (RST answering the
    /// SYN before any SYN-ACK). Passive health signal; the ordinary resets
    /// of a server closing connections do not count.
    pub refused: u64,
    /// Backend only, NAT: refused connections whose RST was withheld and
    /// whose retried SYN went to another backend.
    pub redispatched: u64,
    /// TCP packets without SYN that found no flow and were scheduled
    /// mid-connection: a flow table too small, or state lost (restart
    /// without pins, failover without sync).
    pub midstream: u64,
    /// Service only: new connections refused by its rate limits.
    pub rate_limited: u64,
    /// New TCP connections whose SYN found the CPU's half-open budget
    /// spent and started in `EMBRYOS` (SYNs going unanswered: a flood).
    pub half_open_spilled: u64,
}
const _: () = assert!(core::mem::size_of::<Traffic>() == 80);

impl Traffic {
    /// Field-wise sum (per-CPU slots into one total).
    pub fn merged(self, o: &Traffic) -> Traffic {
        Traffic {
            packets: self.packets + o.packets,
            bytes: self.bytes + o.bytes,
            connections: self.connections + o.connections,
            no_backend: self.no_backend + o.no_backend,
            syn_retransmits: self.syn_retransmits + o.syn_retransmits,
            refused: self.refused + o.refused,
            redispatched: self.redispatched + o.redispatched,
            midstream: self.midstream + o.midstream,
            rate_limited: self.rate_limited + o.rate_limited,
            half_open_spilled: self.half_open_spilled + o.half_open_spilled,
        }
    }
}

/// XDP metadata in front of a packet the XDP program hands to the kernel
/// because its next hop's MAC is unknown: the tc-ingress program on the same
/// interface reads it and calls `bpf_redirect_neigh`, so the kernel resolves
/// the neighbour and sends the (already rewritten) packet, instead of the IP
/// stack seeing it (a reply with the VIP as source would be a martian).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NeighMeta {
    /// [`NEIGH_META_MAGIC`]: the metadata is ours.
    pub magic: u32,
    /// Egress interface the FIB named.
    pub ifindex: u32,
    /// Next hop the FIB named (gateway, or the destination itself), network order.
    pub next_hop_be: u32,
}
const _: () = assert!(core::mem::size_of::<NeighMeta>() == 12);
/// "XDPn" with the layout version in the low byte, so a tc program of
/// another layout never acts on it.
pub const NEIGH_META_MAGIC: u32 = 0x5844_5000 | LAYOUT_VERSION;

/// Most addresses in `VIPS` (service VIPs plus HA floating addresses).
pub const MAX_VIPS: u32 = 128;

/// Value of `VIPS`, keyed by an address (network order) the LB answers for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipInfo {
    /// `VIP_F_*` bits.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<VipInfo>() == 4);

/// Traffic to this address that no service forwards (another port or
/// protocol, a fragment, IP options) is dropped, ICMP excepted, so the LB
/// host's own services are not reachable on it.
pub const VIP_F_DROP_UNSERVED: u32 = 1;
/// An address the HA pair moves: ARP requests for it are answered only
/// while this node's lease (`Settings::lease_until_ns`) runs, so a node
/// whose daemon died stops claiming it once the peer may have taken over.
pub const VIP_F_HA: u32 = 2;

/// The single entry of `SETTINGS`: switches the daemon sets at run time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// `SETTINGS_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// HA: CLOCK_MONOTONIC ns (`bpf_ktime_get_ns`) until which this node
    /// may answer ARP for `VIP_F_HA` addresses. The MASTER's daemon extends
    /// it with every advert it sends, by the master-down interval.
    pub lease_until_ns: u64,
    /// HA: MACs frames may be addressed to besides the ingress interface's
    /// own: the peer's, once it is declared dead, so frames a switch floods
    /// for it (its port went down) or neighbours still send it are
    /// forwarded here at once. The first `accept_count` are used.
    pub accept_macs: [[u8; 6]; MAX_ACCEPT_MACS],
    pub accept_count: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Settings>() == 72);

/// Most MACs `Settings::accept_macs` holds.
pub const MAX_ACCEPT_MACS: usize = 8;

/// Slots of `IFACE_MACS`: an interface with a larger index is not checked
/// (the daemon warns).
pub const MAX_IFINDEX: u32 = 4096;

/// `IFACE_MACS` entry: the MAC of an interface the program is attached to,
/// indexed by its ifindex. A unicast frame to another MAC is not this
/// host's to forward (a switch floods unknown unicast to every port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IfaceMac {
    pub mac: [u8; 6],
    /// 1: the check is on for this interface.
    pub set: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<IfaceMac>() == 8);

/// Report every new or moved flow in `FLOW_EVENTS` (HA flow sync).
pub const SETTINGS_F_SYNC_FLOWS: u32 = 1;
/// Guard ARP for `VIP_F_HA` addresses with the lease.
pub const SETTINGS_F_HA: u32 = 2;
/// Also report a connection's first FIN or RST (cluster flow sync: the
/// peers drop their copy, so their tables hold live connections).
pub const SETTINGS_F_SYNC_CLOSES: u32 = 4;

/// A flow the data path created or moved, reported for HA flow sync.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub value: FlowValue,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 36);

/// Bytes of the `FLOW_EVENTS` ring buffer: 16384 events. When the daemon
/// falls behind, events are lost (counted in `EVENTS_LOST`), never waited for.
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), contain only integers and have no
    // implicit padding (see the size asserts above).
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for NatReverse {}
    unsafe impl aya::Pod for ReplyOwnerKey {}
    unsafe impl aya::Pod for ReplySlot {}
    unsafe impl aya::Pod for Traffic {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for IfaceMac {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for CachedHop {}
    unsafe impl aya::Pod for AclServiceKey {}
    unsafe impl aya::Pod for RateLimit {}
    unsafe impl aya::Pod for ClientRateKey {}
    unsafe impl aya::Pod for Firewall {}
    unsafe impl aya::Pod for ServiceSlot {}
    unsafe impl aya::Pod for SynCookieState {}
    unsafe impl aya::Pod for EmbryoGate {}
}
